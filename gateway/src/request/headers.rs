//! What the request's headers ask for: the schema (`Accept-Profile` / `Content-Profile`), the
//! media type (`Accept`), a count (`Prefer: count=…`) and a range (`Range`), as PostgREST reads
//! them (ApiRequest.hs, ApiRequest/Preferences.hs).

use axum::http::{header, HeaderMap, StatusCode};

use crate::error::ApiError;

/// Schemas a client may name in `Accept-Profile` / `Content-Profile`: both mean `mec`.
pub const PROFILES: [&str; 2] = ["mec", "public"];

/// 406 PGRST106 for a schema other than `mec` or `public`.
pub fn check_profile(headers: &HeaderMap) -> Result<(), ApiError> {
    for name in ["accept-profile", "content-profile"] {
        if let Some(v) = headers.get(name) {
            let v = v.to_str().unwrap_or("").trim();
            if !PROFILES.contains(&v) {
                return Err(ApiError::api(
                    StatusCode::NOT_ACCEPTABLE,
                    "PGRST106",
                    "The schema must be one of the following: mec, public",
                ));
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    Json,
    /// `application/vnd.pgrst.object+json`: exactly one row, as an object.
    Object,
}

/// The first media type of `Accept` we can produce; 406 PGRST107 if none.
pub fn negotiate(headers: &HeaderMap) -> Result<Accept, ApiError> {
    let Some(v) = headers.get(header::ACCEPT) else {
        return Ok(Accept::Json);
    };
    let v = v.to_str().unwrap_or("");
    if v.trim().is_empty() {
        return Ok(Accept::Json);
    }
    for item in v.split(',') {
        let media = item
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/vnd.pgrst.object+json" | "application/vnd.pgrst.object" => {
                return Ok(Accept::Object)
            }
            "application/json"
            | "application/vnd.pgrst.array+json"
            | "application/openapi+json"
            | "application/*"
            | "*/*" => return Ok(Accept::Json),
            _ => {}
        }
    }
    Err(ApiError::api(
        StatusCode::NOT_ACCEPTABLE,
        "PGRST107",
        format!("None of these media types are available: {v}"),
    ))
}

/// `Range: 0-24` (or `items=0-24`); `None` for an absent or unusable header.
pub fn parse_range_header(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = headers.get(header::RANGE)?.to_str().ok()?.trim();
    let v = v.strip_prefix("items=").unwrap_or(v);
    let (lo, hi) = v.split_once('-')?;
    let lo: u64 = lo.trim().parse().ok()?;
    let hi = match hi.trim() {
        "" => None,
        h => Some(h.parse::<u64>().ok()?),
    };
    match hi {
        Some(h) if h < lo => None,
        _ => Some((lo, hi)),
    }
}

/// Does `Prefer` ask for a count? (exact, planned and estimated all count exactly.)
pub fn prefers_count(headers: &HeaderMap) -> bool {
    let mut count = None;
    for v in headers.get_all("prefer") {
        let Ok(v) = v.to_str() else { continue };
        for p in v.split(',') {
            let p = p.trim();
            if let Some(c) = p.strip_prefix("count=") {
                if count.is_none() {
                    count = Some(matches!(c.trim(), "exact" | "planned" | "estimated"));
                }
            }
        }
    }
    count.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_and_accept() {
        let mut h = HeaderMap::new();
        assert!(check_profile(&h).is_ok());
        h.insert("accept-profile", "public".parse().unwrap());
        h.insert("content-profile", "mec".parse().unwrap());
        assert!(check_profile(&h).is_ok());
        h.insert("accept-profile", "mec_data".parse().unwrap());
        assert_eq!(
            check_profile(&h).unwrap_err().status(),
            StatusCode::NOT_ACCEPTABLE
        );

        let mut h = HeaderMap::new();
        assert_eq!(negotiate(&h).unwrap(), Accept::Json);
        h.insert(
            header::ACCEPT,
            "application/vnd.pgrst.object+json".parse().unwrap(),
        );
        assert_eq!(negotiate(&h).unwrap(), Accept::Object);
        h.insert(header::ACCEPT, "text/csv".parse().unwrap());
        assert!(negotiate(&h).is_err());
        h.insert(header::ACCEPT, "text/html, */*;q=0.8".parse().unwrap());
        assert_eq!(negotiate(&h).unwrap(), Accept::Json);
    }

    #[test]
    fn range_header() {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, "0-24".parse().unwrap());
        assert_eq!(parse_range_header(&h), Some((0, Some(24))));
        h.insert(header::RANGE, "items=5-".parse().unwrap());
        assert_eq!(parse_range_header(&h), Some((5, None)));
        h.insert(header::RANGE, "9-3".parse().unwrap());
        assert_eq!(parse_range_header(&h), None);
    }

    #[test]
    fn prefer_count() {
        let mut h = HeaderMap::new();
        h.append(
            "prefer",
            "return=representation, count=exact".parse().unwrap(),
        );
        assert!(prefers_count(&h));
        let mut h = HeaderMap::new();
        h.append("prefer", "count=planned".parse().unwrap());
        assert!(prefers_count(&h));
        assert!(!prefers_count(&HeaderMap::new()));
    }
}
