//! Stripe's webhook signatures, checked the way Stripe documents and its libraries check them.
//!
//! `Stripe-Signature: t=1733300000,v1=<hex>[,v1=<hex>…][,v0=…]`: each `v1` is the hex HMAC-SHA256
//! of `"{t}.{raw body}"` keyed by the endpoint's signing secret. While a secret is being rolled
//! Stripe signs with the old and the new one, so any `v1` may match. Other schemes (`v0`, test
//! signatures) are ignored. A timestamp more than the tolerance away from now is refused, so a
//! captured delivery cannot be replayed later.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery's signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header has no timestamp (t=)")]
    NoTimestamp,
    #[error("the Stripe-Signature header has no v1 signature")]
    NoSignature,
    #[error("no v1 signature in the Stripe-Signature header matches the payload")]
    Mismatch,
    #[error("the Stripe-Signature timestamp is {seconds} s from now, more than the {tolerance} s tolerated")]
    OutsideTolerance { seconds: i64, tolerance: i64 },
}

/// The `t=` and the `v1=` values of a header. Items are `key=value`, comma-separated, with
/// surrounding whitespace ignored; the first `t` counts.
fn parse(header: &str) -> (Option<i64>, Vec<&str>) {
    let mut t = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let Some((k, v)) = item.split_once('=') else {
            continue;
        };
        match k.trim() {
            "t" if t.is_none() => t = v.trim().parse::<i64>().ok(),
            "v1" => v1.push(v.trim()),
            _ => {}
        }
    }
    (t, v1)
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn mac(secret: &str, t: i64, payload: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length: new_from_slice cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(payload);
    m
}

/// Checks `header` against `payload` (the raw body, byte for byte) and `secret`, at `now` (Unix
/// seconds). Returns the signed timestamp. Signatures are compared in constant time.
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secret: &str,
    now: i64,
    tolerance: i64,
) -> Result<i64, SignatureError> {
    let header = header
        .filter(|h| !h.trim().is_empty())
        .ok_or(SignatureError::Missing)?;
    let (t, signatures) = parse(header);
    let t = t.ok_or(SignatureError::NoTimestamp)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoSignature);
    }
    let expected = mac(secret, t, payload);
    let matched = signatures
        .iter()
        .filter_map(|s| hex_decode(s))
        .any(|sig| expected.clone().verify_slice(&sig).is_ok());
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    let seconds = now.saturating_sub(t);
    if seconds.abs() > tolerance {
        return Err(SignatureError::OutsideTolerance { seconds, tolerance });
    }
    Ok(t)
}

/// The `v1` signature of `payload` at `t` (hex), as Stripe computes it.
pub fn sign(payload: &[u8], secret: &str, t: i64) -> String {
    mac(secret, t, payload)
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
    const NOW: i64 = 1_733_300_000;

    fn header(t: i64, sigs: &[String]) -> String {
        let mut h = format!("t={t}");
        for s in sigs {
            h.push_str(&format!(",v1={s}"));
        }
        h
    }

    #[test]
    fn a_known_signature() {
        // Computed independently: Python's hmac.new(secret, b"1733300000." + body, sha256).
        assert_eq!(
            sign(BODY, SECRET, NOW),
            "5d3def08c05899775693bee4dc001df94ccbd86b72a59070a3590f2aa96073bf"
        );
    }

    #[test]
    fn accepts_a_good_signature_and_returns_its_time() {
        let h = header(NOW, &[sign(BODY, SECRET, NOW)]);
        assert_eq!(verify(Some(&h), BODY, SECRET, NOW + 10, 300), Ok(NOW));
    }

    #[test]
    fn any_v1_may_match_while_a_secret_rolls() {
        let h = header(
            NOW,
            &[sign(BODY, "whsec_old", NOW), sign(BODY, SECRET, NOW)],
        );
        assert_eq!(verify(Some(&h), BODY, SECRET, NOW, 300), Ok(NOW));
        assert_eq!(verify(Some(&h), BODY, "whsec_old", NOW, 300), Ok(NOW));
        let with_v0 = format!("{h},v0=deadbeef");
        assert_eq!(verify(Some(&with_v0), BODY, SECRET, NOW, 300), Ok(NOW));
    }

    #[test]
    fn refuses_what_stripe_refuses() {
        let good = sign(BODY, SECRET, NOW);
        assert_eq!(
            verify(None, BODY, SECRET, NOW, 300),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(Some(" "), BODY, SECRET, NOW, 300),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(Some(&format!("v1={good}")), BODY, SECRET, NOW, 300),
            Err(SignatureError::NoTimestamp)
        );
        assert_eq!(
            verify(Some(&format!("t={NOW},v0={good}")), BODY, SECRET, NOW, 300),
            Err(SignatureError::NoSignature)
        );
        let h = header(NOW, std::slice::from_ref(&good));
        assert_eq!(
            verify(Some(&h), BODY, "whsec_other", NOW, 300),
            Err(SignatureError::Mismatch),
            "another namespace's secret"
        );
        assert_eq!(
            verify(
                Some(&h),
                br#"{"id":"evt_1","object":"event" }"#,
                SECRET,
                NOW,
                300
            ),
            Err(SignatureError::Mismatch),
            "a body changed by one byte"
        );
        assert_eq!(
            verify(
                Some(&header(NOW + 1, std::slice::from_ref(&good))),
                BODY,
                SECRET,
                NOW,
                300
            ),
            Err(SignatureError::Mismatch),
            "the timestamp is signed too"
        );
        assert_eq!(
            verify(
                Some(&header(NOW, &["zz".repeat(32)])),
                BODY,
                SECRET,
                NOW,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&h), BODY, SECRET, NOW + 301, 300),
            Err(SignatureError::OutsideTolerance {
                seconds: 301,
                tolerance: 300
            })
        );
        assert_eq!(
            verify(Some(&h), BODY, SECRET, NOW - 301, 300),
            Err(SignatureError::OutsideTolerance {
                seconds: -301,
                tolerance: 300
            })
        );
        assert_eq!(verify(Some(&h), BODY, SECRET, NOW + 300, 300), Ok(NOW));
    }

    #[test]
    fn whitespace_and_order_do_not_matter() {
        let good = sign(BODY, SECRET, NOW);
        let h = format!(" v1={good} , t={NOW} ");
        assert_eq!(verify(Some(&h), BODY, SECRET, NOW, 300), Ok(NOW));
    }
}
