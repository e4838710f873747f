//! Facts about SQL texts that pg_mec checks when it compiles, not when it runs.

/// The highest `$n` in `sql`, 0 when there is none: `stmt!` (in the extension) compares it with
/// the number of parameters a statement declares. A `const fn`, so the check is a compile error.
pub const fn placeholders(sql: &str) -> usize {
    let b = sql.as_bytes();
    let (mut i, mut max) = (0, 0);
    while i < b.len() {
        if b[i] == b'$' {
            let (mut j, mut n) = (i + 1, 0usize);
            while j < b.len() && b[j].is_ascii_digit() {
                n = n * 10 + (b[j] - b'0') as usize;
                j += 1;
            }
            if n > max {
                max = n;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::placeholders;

    #[test]
    fn counts_the_highest_placeholder() {
        assert_eq!(placeholders("SELECT 1"), 0);
        assert_eq!(placeholders("WHERE a = $1 AND b = $2"), 2);
        assert_eq!(placeholders("$3::numeric IS NULL OR used + $12 <= $3"), 12);
        assert_eq!(placeholders("'$' || $1"), 1);
    }

    #[test]
    fn is_usable_in_a_constant() {
        const N: usize = placeholders("UPDATE t SET a = $2 WHERE b = $1");
        assert_eq!(N, 2);
    }
}
