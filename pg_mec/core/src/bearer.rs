//! Shared bearer secrets, as Auth0's log streams send them: the `Authorization` header carries the
//! token configured on the stream, with or without a `Bearer ` scheme. Compared in constant time.

/// Whether two byte strings are equal, in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

/// Whether the `Authorization` header value carries `secret`: `Bearer <secret>` (scheme in any
/// case) or the bare secret. An empty secret matches nothing.
pub fn matches(header: Option<&str>, secret: &str) -> bool {
    if secret.is_empty() {
        return false;
    }
    let Some(h) = header.map(str::trim) else {
        return false;
    };
    let token = match h.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => h,
    };
    constant_time_eq(token.as_bytes(), secret.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_equal() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn bearer_or_bare() {
        assert!(matches(Some("Bearer s3cret"), "s3cret"));
        assert!(matches(Some("bearer  s3cret "), "s3cret"));
        assert!(matches(Some("s3cret"), "s3cret"));
        assert!(!matches(Some("Bearer s3cre"), "s3cret"));
        assert!(!matches(Some("Basic s3cret"), "s3cret"));
        assert!(!matches(None, "s3cret"));
        assert!(
            !matches(Some(""), ""),
            "no secret configured matches nothing"
        );
    }
}
