//! RS256 and ES256 tokens verified with the keys of a JWKS file (`MEC_JWT_JWKS`).
//! The private keys in `fixtures/test_only_*` exist only to sign these tests' tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test's panic is its failure

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mec_gateway::error::ApiError;
use mec_gateway::infra::auth::{JwtVerifier, Role};
use mec_gateway::infra::config::JwtConfig;
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn verifier(secret: Option<&str>) -> JwtVerifier {
    JwtVerifier::new(&JwtConfig {
        secret: secret.map(str::to_string),
        jwks_path: Some(fixture("jwks.json")),
        audience: None,
    })
    .expect("the JWKS fixture loads")
}

fn es256() -> EncodingKey {
    EncodingKey::from_ec_der(&std::fs::read(fixture("test_only_es256.pkcs8.der")).unwrap())
}

fn rs256() -> EncodingKey {
    EncodingKey::from_rsa_der(&std::fs::read(fixture("test_only_rs256.pkcs1.der")).unwrap())
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, &claims, key).unwrap()
}

fn claims(role: &str) -> serde_json::Value {
    json!({"role": role, "namespace_id": "n", "exp": chrono::Utc::now().timestamp() + 60})
}

fn is_401(r: Result<mec_gateway::infra::auth::Claims, ApiError>) -> bool {
    matches!(r, Err(ApiError::Unauthorized { .. }))
}

#[test]
fn es256_and_rs256_tokens_verify() {
    let v = verifier(None);
    let t = sign(
        Algorithm::ES256,
        Some("test-ec"),
        &es256(),
        claims("mec_admin"),
    );
    assert_eq!(v.verify(&t).unwrap().role, Role::Admin);
    let t = sign(
        Algorithm::RS256,
        Some("test-rsa"),
        &rs256(),
        claims("mec_user"),
    );
    assert_eq!(v.verify(&t).unwrap().role, Role::User);
    // Without a kid every key of the algorithm is tried.
    let t = sign(Algorithm::ES256, None, &es256(), claims("mec_service"));
    assert_eq!(v.verify(&t).unwrap().role, Role::Service);
}

#[test]
fn jwks_rejections() {
    let v = verifier(None);
    // Unknown kid.
    let t = sign(
        Algorithm::ES256,
        Some("other"),
        &es256(),
        claims("mec_admin"),
    );
    assert!(is_401(v.verify(&t)));
    // Expired.
    let t = sign(
        Algorithm::RS256,
        Some("test-rsa"),
        &rs256(),
        json!({"role": "mec_user", "exp": chrono::Utc::now().timestamp() - 60}),
    );
    assert!(is_401(v.verify(&t)));
    // Role outside the mec roles.
    let t = sign(
        Algorithm::RS256,
        Some("test-rsa"),
        &rs256(),
        claims("postgres"),
    );
    assert!(is_401(v.verify(&t)));
    // HS256 is refused when no secret is configured (no algorithm confusion with the
    // public keys).
    let t = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"anything-anything-anything-anything"),
        claims("mec_admin"),
    );
    assert!(is_401(v.verify(&t)));
    // Both configured: HS256 works with the secret.
    let secret = "0123456789abcdef0123456789abcdef";
    let v = verifier(Some(secret));
    let t = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(secret.as_bytes()),
        claims("mec_admin"),
    );
    assert!(v.verify(&t).is_ok());
}

#[test]
fn a_jwks_without_usable_keys_is_a_config_error() {
    let dir = std::env::temp_dir().join(format!("mec-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("empty.json");
    std::fs::write(&p, r#"{"keys": []}"#).unwrap();
    let r = JwtVerifier::new(&JwtConfig {
        secret: None,
        jwks_path: Some(p.clone()),
        audience: None,
    });
    assert!(r.is_err());
    std::fs::write(&p, "not json").unwrap();
    assert!(JwtVerifier::new(&JwtConfig {
        secret: None,
        jwks_path: Some(p),
        audience: None,
    })
    .is_err());
    let _ = std::fs::remove_dir_all(dir);
}
