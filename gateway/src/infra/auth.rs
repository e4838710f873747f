//! JWT verification: HS256 with a shared secret, RS256/ES256 with keys from a JWKS file.
//!
//! The verified claims become [`Claims`], a request extractor. A missing, malformed,
//! expired or wrongly signed token, or a `role` outside the mec roles, is a 401 with
//! `WWW-Authenticate: Bearer …` — nothing reaches the database in that case.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderMap};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::infra::config::{ConfigError, JwtConfig};
use crate::AppState;

/// Clock skew allowed on `exp` and `nbf`, as PostgREST does.
pub const LEEWAY_SECONDS: u64 = 30;

/// The database roles a token may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    User,
    Service,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::User, Role::Service, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "mec_user",
            Role::Service => "mec_service",
            Role::Admin => "mec_admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Verified JWT claims (cheap to clone: a verified token's claims are shared by its requests).
#[derive(Clone, Debug)]
pub struct Claims {
    pub role: Role,
    /// Every claim of the token, `role` included.
    pub all: Arc<Map<String, Value>>,
    /// `all` as JSON: what is sent to `request.jwt.claims`.
    json: Arc<str>,
}

impl Claims {
    fn new(role: Role, all: Map<String, Value>) -> Self {
        let json = Value::Object(all.clone()).to_string().into();
        Claims {
            role,
            all: Arc::new(all),
            json,
        }
    }

    pub fn to_json(&self) -> String {
        self.json.to_string()
    }
}

/// Tokens verified before, with their claims: a client sends the same token with every request,
/// and checking its signature and parsing its claims again was a tenth of the gateway's CPU per
/// call. PostgREST keeps such a cache too (`jwt-cache-max-lifetime`). A hit still checks `exp`
/// and `nbf` against the clock, so a cached token expires exactly when it would have.
struct VerifiedTokens {
    tokens: Mutex<HashMap<Box<str>, Verified>>,
}

#[derive(Clone)]
struct Verified {
    claims: Claims,
    exp: Option<f64>,
    nbf: Option<f64>,
}

/// Tokens kept; when full, the cache starts afresh (a burst of one-off tokens cannot grow it).
const VERIFIED_TOKENS_MAX: usize = 10_000;

impl VerifiedTokens {
    fn get(&self, token: &str) -> Option<Claims> {
        let tokens = self.tokens.lock().ok()?;
        let v = tokens.get(token)?;
        let now = chrono::Utc::now().timestamp() as f64;
        let leeway = LEEWAY_SECONDS as f64;
        // The checks jsonwebtoken makes (exp < now - leeway: expired; nbf > now + leeway: not
        // yet valid); a token that fails them is verified again, for the same error.
        let expired = v.exp.is_some_and(|exp| exp < now - leeway);
        let immature = v.nbf.is_some_and(|nbf| nbf > now + leeway);
        (!expired && !immature).then(|| v.claims.clone())
    }

    fn put(&self, token: &str, claims: &Claims) {
        let Ok(mut tokens) = self.tokens.lock() else {
            return;
        };
        if tokens.len() >= VERIFIED_TOKENS_MAX {
            tokens.clear();
        }
        let number = |k: &str| claims.all.get(k).and_then(Value::as_f64);
        tokens.insert(
            token.into(),
            Verified {
                claims: claims.clone(),
                exp: number("exp"),
                nbf: number("nbf"),
            },
        );
    }
}

struct JwksKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Holds the decoding keys, built once at startup.
pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    jwks: Vec<JwksKey>,
    audience: Option<String>,
    verified: VerifiedTokens,
}

fn unauthorized(code: &'static str, description: &str) -> ApiError {
    ApiError::Unauthorized {
        code,
        message: description.to_string(),
        description: Some(description.to_string()),
    }
}

impl JwtVerifier {
    pub fn new(cfg: &JwtConfig) -> Result<Self, ConfigError> {
        let hs256 = cfg
            .secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.as_bytes()));
        let mut jwks = Vec::new();
        if let Some(path) = &cfg.jwks_path {
            let bad = |m: String| ConfigError::Invalid {
                name: "MEC_JWT_JWKS",
                message: m,
            };
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| bad(format!("{}: not a JWKS document: {e}", path.display())))?;
            for jwk in &set.keys {
                let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                    (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                    (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(_)) => {
                        Algorithm::ES256
                    }
                    (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                    (None, AlgorithmParameters::EllipticCurve(p))
                        if p.curve == EllipticCurve::P256 =>
                    {
                        Algorithm::ES256
                    }
                    // Other algorithms are not accepted: skip the key.
                    _ => continue,
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| bad(format!("key {:?}: {e}", jwk.common.key_id)))?;
                jwks.push(JwksKey {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                });
            }
            if jwks.is_empty() {
                return Err(bad(format!(
                    "{} has no RS256 or ES256 (P-256) key",
                    path.display()
                )));
            }
        }
        Ok(JwtVerifier {
            hs256,
            jwks,
            audience: cfg.audience.clone(),
            verified: VerifiedTokens {
                tokens: Mutex::new(HashMap::new()),
            },
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.required_spec_claims = HashSet::new();
        v.leeway = LEEWAY_SECONDS;
        v.validate_exp = true;
        v.validate_nbf = true;
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                v.required_spec_claims.insert("aud".to_string());
            }
            None => v.validate_aud = false,
        }
        v
    }

    /// Verify a compact JWT and check its role claim (a token verified before: from the cache).
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        if let Some(claims) = self.verified.get(token) {
            return Ok(claims);
        }
        let claims = self.verify_signed(token)?;
        self.verified.put(token, &claims);
        Ok(claims)
    }

    fn verify_signed(&self, token: &str) -> Result<Claims, ApiError> {
        use jsonwebtoken::errors::ErrorKind as K;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthorized("PGRST301", "JWT is malformed"))?;
        let candidates: Vec<(&DecodingKey, Algorithm)> = match header.alg {
            Algorithm::HS256 => self.hs256.iter().map(|k| (k, Algorithm::HS256)).collect(),
            Algorithm::RS256 | Algorithm::ES256 => self
                .jwks
                .iter()
                .filter(|k| k.alg == header.alg)
                .filter(|k| match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                })
                .map(|k| (&k.key, k.alg))
                .collect(),
            _ => Vec::new(),
        };
        if candidates.is_empty() {
            return Err(unauthorized(
                "PGRST301",
                "JWT algorithm or key is not accepted",
            ));
        }
        let mut last = unauthorized("PGRST301", "JWT signature is invalid");
        for (key, alg) in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation(alg)) {
                Ok(data) => return claims_from(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        K::ExpiredSignature => unauthorized("PGRST301", "JWT expired"),
                        K::ImmatureSignature => unauthorized("PGRST301", "JWT not yet valid"),
                        K::InvalidAudience | K::MissingRequiredClaim(_) => {
                            unauthorized("PGRST301", "JWT not in audience")
                        }
                        K::InvalidSignature => unauthorized("PGRST301", "JWT signature is invalid"),
                        K::InvalidClaimFormat(c) => {
                            unauthorized("PGRST301", &format!("JWT claim {c} is invalid"))
                        }
                        _ => unauthorized("PGRST301", "JWT is malformed"),
                    };
                    // Only a bad signature is worth trying the next key for.
                    if !matches!(e.kind(), K::InvalidSignature) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

fn claims_from(all: Map<String, Value>) -> Result<Claims, ApiError> {
    let role = match all.get("role") {
        None | Some(Value::Null) => {
            return Err(unauthorized("PGRST302", "JWT has no role claim"));
        }
        Some(Value::String(r)) => Role::parse(r),
        Some(_) => None,
    };
    match role {
        Some(role) => Ok(Claims::new(role, all)),
        None => Err(unauthorized(
            "PGRST301",
            "JWT role must be one of mec_user, mec_service, mec_admin",
        )),
    }
}

/// Read and verify the bearer token of a request. `Ok(None)` when no token was sent.
pub fn claims_from_headers(
    verifier: &JwtVerifier,
    headers: &HeaderMap,
) -> Result<Option<Claims>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| unauthorized("PGRST301", "Authorization header is not valid"))?
        .trim();
    let token = match value.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
        _ => {
            return Err(unauthorized(
                "PGRST301",
                "Authorization header must be Bearer <token>",
            ))
        }
    };
    verifier.verify(token).map(Some)
}

fn anonymous() -> ApiError {
    ApiError::Unauthorized {
        code: "PGRST302",
        message: "Anonymous access is disabled".into(),
        description: None,
    }
}

impl FromRequestParts<AppState> for Claims {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        claims_from_headers(&state.jwt, &parts.headers)?.ok_or_else(anonymous)
    }
}

/// Options for [`mint`].
#[derive(Debug, Default)]
pub struct TokenSpec {
    pub role: String,
    pub namespace_id: String,
    pub account_id: Option<String>,
    pub sub: Option<String>,
    pub ttl_seconds: u64,
    pub audience: Option<String>,
}

/// Sign an HS256 token (for `mec-gateway token`).
pub fn mint(secret: &str, spec: &TokenSpec) -> Result<String, String> {
    if Role::parse(&spec.role).is_none() {
        return Err(format!(
            "--role must be one of mec_user, mec_service, mec_admin (got {:?})",
            spec.role
        ));
    }
    let now = chrono::Utc::now().timestamp();
    let mut claims = Map::new();
    claims.insert("role".into(), spec.role.clone().into());
    claims.insert("namespace_id".into(), spec.namespace_id.clone().into());
    if let Some(a) = &spec.account_id {
        claims.insert("account_id".into(), a.clone().into());
    }
    if let Some(s) = &spec.sub {
        claims.insert("sub".into(), s.clone().into());
    }
    if let Some(aud) = &spec.audience {
        claims.insert("aud".into(), aud.clone().into());
    }
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + spec.ttl_seconds as i64).into());
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier(aud: Option<&str>) -> JwtVerifier {
        JwtVerifier::new(&JwtConfig {
            secret: Some(SECRET.into()),
            jwks_path: None,
            audience: aud.map(str::to_string),
        })
        .unwrap()
    }

    fn sign(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn code(e: ApiError) -> &'static str {
        match e {
            ApiError::Unauthorized { code, .. } => code,
            other => panic!("not a 401: {other:?}"),
        }
    }

    #[test]
    fn minted_token_verifies() {
        let t = mint(
            SECRET,
            &TokenSpec {
                role: "mec_service".into(),
                namespace_id: "ns".into(),
                account_id: Some("acc".into()),
                ttl_seconds: 60,
                ..Default::default()
            },
        )
        .unwrap();
        let c = verifier(None).verify(&t).unwrap();
        assert_eq!(c.role, Role::Service);
        assert_eq!(c.all["namespace_id"], "ns");
        assert_eq!(c.all["account_id"], "acc");
    }

    #[test]
    fn rejects() {
        let v = verifier(None);
        let now = chrono::Utc::now().timestamp();
        // Expired beyond the leeway.
        let t = sign(
            serde_json::json!({"role": "mec_user", "exp": now - 31}),
            SECRET,
        );
        assert_eq!(code(v.verify(&t).unwrap_err()), "PGRST301");
        // Within the leeway.
        let t = sign(
            serde_json::json!({"role": "mec_user", "exp": now - 10}),
            SECRET,
        );
        assert!(v.verify(&t).is_ok());
        // Wrong secret.
        let t = sign(
            serde_json::json!({"role": "mec_user"}),
            "another-secret-another-secret-xx",
        );
        assert_eq!(code(v.verify(&t).unwrap_err()), "PGRST301");
        // Unknown role, missing role.
        let t = sign(serde_json::json!({"role": "postgres"}), SECRET);
        assert_eq!(code(v.verify(&t).unwrap_err()), "PGRST301");
        let t = sign(serde_json::json!({"sub": "x"}), SECRET);
        assert_eq!(code(v.verify(&t).unwrap_err()), "PGRST302");
        // Garbage.
        assert_eq!(code(v.verify("abc.def").unwrap_err()), "PGRST301");
        assert!(mint(
            SECRET,
            &TokenSpec {
                role: "root".into(),
                ..Default::default()
            }
        )
        .is_err());
    }

    #[test]
    fn verified_tokens_are_cached_until_they_expire() {
        let v = verifier(None);
        let now = chrono::Utc::now().timestamp();
        let t = sign(
            serde_json::json!({"role": "mec_user", "exp": now + 3600}),
            SECRET,
        );
        let first = v.verify(&t).unwrap();
        assert!(v.verified.get(&t).is_some(), "a verified token is cached");
        let again = v.verify(&t).unwrap();
        assert!(
            Arc::ptr_eq(&first.all, &again.all),
            "the second call is a hit"
        );
        assert_eq!(again.to_json(), first.to_json());

        // A cached token past its exp (beyond the leeway) is verified again, and refused.
        let stale = sign(
            serde_json::json!({"role": "mec_user", "exp": now - 31}),
            SECRET,
        );
        let claims = Claims::new(Role::User, Map::new());
        v.verified.put(&stale, &claims);
        v.verified
            .tokens
            .lock()
            .unwrap()
            .get_mut(stale.as_str())
            .unwrap()
            .exp = Some((now - 31) as f64);
        assert!(v.verified.get(&stale).is_none());
        assert_eq!(code(v.verify(&stale).unwrap_err()), "PGRST301");
        // Not yet valid beyond the leeway: likewise.
        let early = sign(
            serde_json::json!({"role": "mec_user", "nbf": now + 3600}),
            SECRET,
        );
        assert_eq!(code(v.verify(&early).unwrap_err()), "PGRST301");
        // Refused tokens are never cached.
        let forged = sign(
            serde_json::json!({"role": "mec_admin"}),
            "another-secret-another-secret-xx",
        );
        assert!(v.verify(&forged).is_err());
        assert!(v.verified.get(&forged).is_none());
        assert!(v.verified.get(&early).is_none());
    }

    #[test]
    fn audience() {
        let v = verifier(Some("mec"));
        let t = sign(
            serde_json::json!({"role": "mec_user", "aud": "mec"}),
            SECRET,
        );
        assert!(v.verify(&t).is_ok());
        let t = sign(
            serde_json::json!({"role": "mec_user", "aud": "other"}),
            SECRET,
        );
        assert!(v.verify(&t).is_err());
        let t = sign(serde_json::json!({"role": "mec_user"}), SECRET);
        assert!(v.verify(&t).is_err());
    }

    #[test]
    fn bearer_header() {
        let v = verifier(None);
        let mut h = HeaderMap::new();
        assert!(claims_from_headers(&v, &h).unwrap().is_none());
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(claims_from_headers(&v, &h).is_err());
    }
}
