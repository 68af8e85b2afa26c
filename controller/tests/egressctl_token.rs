//! `egressctl token mint` as a real process: EdDSA with an openssl-made
//! Ed25519 key and HS256 with a base64 secret, verified with the public
//! key / secret the API would hold; bad input exits 2 and prints no key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::Command;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

const EGRESSCTL: &str = env!("CARGO_BIN_EXE_egressctl");

#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
    org: String,
    iat: u64,
    exp: u64,
    aud: String,
    iss: String,
}

fn mint(key: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(EGRESSCTL)
        .args(["token", "mint", "--key-file"])
        .arg(key)
        .args(["--org", "acme", "--user", "alice"])
        .args(extra)
        .output()
        .unwrap()
}

fn validation(alg: Algorithm, iss: &str, aud: &str) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[iss]);
    v.set_audience(&[aud]);
    v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    v
}

#[test]
fn mints_eddsa_and_hs256_tokens_the_api_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("ed.pem");
    let public = dir.path().join("ed.pub.pem");
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private)
        .status()
        .expect("openssl")
        .success();
    assert!(ok);
    assert!(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success()
    );
    let out = mint(
        &private,
        &[
            "--ttl",
            "15m",
            "--issuer",
            "https://idp",
            "--audience",
            "api",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    let key = DecodingKey::from_ed_pem(&std::fs::read(&public).unwrap()).unwrap();
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &key,
        &validation(Algorithm::EdDSA, "https://idp", "api"),
    )
    .unwrap();
    let c = data.claims;
    assert_eq!(
        (
            c.sub.as_str(),
            c.org.as_str(),
            c.aud.as_str(),
            c.iss.as_str()
        ),
        ("alice", "acme", "api", "https://idp")
    );
    assert_eq!(c.exp - c.iat, 900);

    // HS256 with a base64 secret; defaults for issuer and audience.
    let secret = dir.path().join("hs.b64");
    std::fs::write(&secret, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n").unwrap();
    let out = mint(&secret, &["--ttl", "60"]);
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let key = DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
    let data = jsonwebtoken::decode::<Claims>(
        token.trim(),
        &key,
        &validation(Algorithm::HS256, "chokepoint", "chokepoint-api"),
    )
    .unwrap();
    assert_eq!(data.claims.exp - data.claims.iat, 60);
}

#[test]
fn bad_input_exits_2_without_printing_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.b64");
    std::fs::write(&short, "c2hvcnQtc2VjcmV0\n").unwrap();
    let out = mint(&short, &["--ttl", "60"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 32 bytes"), "{err}");
    assert!(!err.contains("c2hvcnQtc2VjcmV0"));
    // A public key cannot sign.
    let pubkey = dir.path().join("pub.pem");
    std::fs::write(&pubkey, "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n").unwrap();
    assert_eq!(mint(&pubkey, &["--ttl", "60"]).status.code(), Some(2));
    let good = dir.path().join("hs.b64");
    std::fs::write(&good, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
    for ttl in ["0", "31d", "ten"] {
        assert_eq!(
            mint(&good, &["--ttl", ttl]).status.code(),
            Some(2),
            "ttl {ttl}"
        );
    }
    assert_eq!(
        mint(&dir.path().join("missing"), &["--ttl", "60"])
            .status
            .code(),
        Some(2)
    );
}
