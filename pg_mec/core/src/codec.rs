//! A small byte encoding for values kept in shared memory (`the extension's cache/shared.rs`): fixed-width
//! little-endian integers, length-prefixed strings, Decimals in their 16-byte form, `Option`s
//! behind a presence byte. A reader that runs out of bytes or meets a bad tag returns `None`.

use crate::Decimal;

#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A string of at most 255 bytes; `false` (and nothing written) when longer.
    pub fn str(&mut self, s: &str) -> bool {
        let Ok(len) = u8::try_from(s.len()) else {
            return false;
        };
        self.u8(len);
        self.0.extend_from_slice(s.as_bytes());
        true
    }

    pub fn decimal(&mut self, d: Decimal) {
        self.0.extend_from_slice(&d.serialize());
    }

    /// `Some(v)` as 1 then `v` written by `f`; `None` as 0. Returns what `f` returned (true for
    /// `None`).
    pub fn opt<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Self, T) -> bool) -> bool {
        match v {
            None => {
                self.u8(0);
                true
            }
            Some(v) => {
                self.u8(1);
                f(self, v)
            }
        }
    }
}

pub struct Reader<'a>(pub &'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }

    pub fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    pub fn i64(&mut self) -> Option<i64> {
        self.take::<8>().map(i64::from_le_bytes)
    }

    pub fn i32(&mut self) -> Option<i32> {
        self.take::<4>().map(i32::from_le_bytes)
    }

    pub fn string(&mut self) -> Option<String> {
        let len = usize::from(self.u8()?);
        if self.0.len() < len {
            return None;
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(s.to_vec()).ok()
    }

    pub fn decimal(&mut self) -> Option<Decimal> {
        self.take::<16>().map(Decimal::deserialize)
    }

    /// Reads what `Writer::opt` wrote: `Some(None)` for an absent value, `None` on bad input.
    pub fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            1 => f(self).map(Some),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn round_trip() {
        let mut w = Writer::default();
        w.u8(7);
        w.bool(true);
        w.i64(-5);
        w.i32(42);
        assert!(w.str("hard"));
        w.decimal(Decimal::from_str("12.50").unwrap());
        assert!(w.opt(None::<i64>, |w, v| {
            w.i64(v);
            true
        }));
        assert!(w.opt(Some(9i64), |w, v| {
            w.i64(v);
            true
        }));
        assert!(!w.str(&"x".repeat(256)));
        let mut r = Reader(&w.0);
        assert_eq!(r.u8(), Some(7));
        assert_eq!(r.bool(), Some(true));
        assert_eq!(r.i64(), Some(-5));
        assert_eq!(r.i32(), Some(42));
        assert_eq!(r.string().as_deref(), Some("hard"));
        assert_eq!(r.decimal(), Some(Decimal::from_str("12.50").unwrap()));
        assert_eq!(r.opt(Reader::i64), Some(None));
        assert_eq!(r.opt(Reader::i64), Some(Some(9)));
        assert!(r.is_empty());
        assert_eq!(r.u8(), None);
    }

    #[test]
    fn truncated_input_is_refused() {
        let mut w = Writer::default();
        assert!(w.str("override"));
        let mut r = Reader(&w.0[..4]);
        assert_eq!(r.string(), None);
        assert_eq!(Reader(&[2]).opt(Reader::u8), None);
    }
}
