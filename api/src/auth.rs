//! Bearer tokens: JWT verification with the algorithm pinned by the key
//! file, and the runtime's service token.
//!
//! The key file (`CHOKEPOINT_API_KEY_FILE`) decides the one algorithm the
//! server accepts: an Ed25519 public key in PEM (`-----BEGIN PUBLIC KEY-----`)
//! pins `EdDSA`; anything else must be base64 of an HS256 secret of at least
//! 32 bytes and pins `HS256`. A token whose header names another algorithm
//! (`none` included, which jsonwebtoken cannot even parse) is refused before
//! its signature is looked at.
//!
//! Must never: accept a token whose `alg` is not the configured one, put a
//! token or a key in an error message or a log line, or compare the service
//! token in variable time.

use std::path::Path;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Shortest accepted HS256 secret and service token, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// Longest accepted token, in bytes (a JWT is small; this bounds the work).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why a key file or token file was refused. Never carries its contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM that is not an Ed25519 public key.
    #[error(
        "{0}: a PEM key file must hold an Ed25519 public key (`openssl pkey -pubout`), not a private key or another type"
    )]
    BadPem(String),
    /// Not PEM, and not base64 of at least 32 bytes.
    #[error(
        "{0}: write an Ed25519 public key in PEM, or an HS256 secret as base64 of at least 32 bytes (`openssl rand -base64 32`)"
    )]
    BadSecret(String),
    /// The service token file is too short.
    #[error("{0}: the service token must be at least 32 bytes (`openssl rand -base64 32`)")]
    ShortServiceToken(String),
}

/// The claims every token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// The org id.
    pub org: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Audience.
    pub aud: String,
    /// Issuer.
    pub iss: String,
}

/// Why a token was refused. The variants are for tests and logs; every one
/// of them is the same 401 to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token")]
    Missing,
    /// Not a well-formed JWT (including `alg: none`).
    #[error("malformed token")]
    Malformed,
    /// The header names another algorithm than the configured one.
    #[error("wrong algorithm")]
    Algorithm,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `exp` is past.
    #[error("token expired")]
    Expired,
    /// `iat` or `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `aud` is not ours.
    #[error("wrong audience")]
    Audience,
    /// `iss` is not ours.
    #[error("wrong issuer")]
    Issuer,
    /// A claim is missing or empty.
    #[error("missing claim")]
    Claims,
    /// The user's tokens or org membership were revoked.
    #[error("token revoked")]
    Revoked,
}

impl TokenError {
    /// The reason as logged and as the `reason` label of
    /// `chokepoint_api_auth_refusals_total` (snake_case, fixed).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Missing => "missing_token",
            TokenError::Malformed => "malformed_token",
            TokenError::Algorithm => "wrong_algorithm",
            TokenError::Signature => "bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::Audience => "wrong_audience",
            TokenError::Issuer => "wrong_issuer",
            TokenError::Claims => "missing_claim",
            TokenError::Revoked => "token_revoked",
        }
    }
}

/// Verifies bearer JWTs with one pinned algorithm and key.
pub struct Verifier {
    alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Load the key file and pin its algorithm.
    pub fn from_file(path: &Path, issuer: &str, audience: &str) -> Result<Verifier, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Verifier::from_bytes(&bytes, &path.display().to_string(), issuer, audience)
    }

    /// Build from the key file's contents (`name` is for messages).
    pub fn from_bytes(
        bytes: &[u8],
        name: &str,
        issuer: &str,
        audience: &str,
    ) -> Result<Verifier, KeyError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| KeyError::BadSecret(name.to_owned()))?
            .trim();
        let (alg, key) = if text.starts_with("-----BEGIN") {
            if !text.starts_with("-----BEGIN PUBLIC KEY-----") {
                return Err(KeyError::BadPem(name.to_owned()));
            }
            let key = DecodingKey::from_ed_pem(text.as_bytes())
                .map_err(|_| KeyError::BadPem(name.to_owned()))?;
            (Algorithm::EdDSA, key)
        } else {
            let secret = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| KeyError::BadSecret(name.to_owned()))?;
            if secret.len() < MIN_SECRET_LEN {
                return Err(KeyError::BadSecret(name.to_owned()));
            }
            (Algorithm::HS256, DecodingKey::from_secret(&secret))
        };
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_audience(&[audience]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        Ok(Verifier {
            alg,
            key,
            validation,
        })
    }

    /// The pinned algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Verify `token` at Unix time `now`: algorithm, signature, `exp`,
    /// `nbf`, `iat`, `aud`, `iss`, and non-empty `sub` and `org`.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        // The header first: an algorithm switch is refused before any key is
        // used with it.
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != self.alg {
            return Err(TokenError::Algorithm);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| map_jwt_error(e.kind()))?;
        let claims = data.claims;
        if claims.iat > now.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::NotYetValid);
        }
        if claims.sub.is_empty() || claims.org.is_empty() {
            return Err(TokenError::Claims);
        }
        Ok(claims)
    }
}

fn map_jwt_error(kind: &jsonwebtoken::errors::ErrorKind) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature => TokenError::Signature,
        K::ExpiredSignature => TokenError::Expired,
        K::ImmatureSignature => TokenError::NotYetValid,
        K::InvalidAudience => TokenError::Audience,
        K::InvalidIssuer => TokenError::Issuer,
        K::InvalidAlgorithm => TokenError::Algorithm,
        K::MissingRequiredClaim(_) => TokenError::Claims,
        _ => TokenError::Malformed,
    }
}

/// The agent runtime's service token, kept as its SHA-256 digest and
/// compared in constant time.
pub struct ServiceToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceToken(..)")
    }
}

impl ServiceToken {
    /// Load from `CHOKEPOINT_API_SERVICE_TOKEN_FILE` (whitespace trimmed).
    pub fn from_file(path: &Path) -> Result<ServiceToken, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let token = text.trim();
        if token.len() < MIN_SECRET_LEN {
            return Err(KeyError::ShortServiceToken(path.display().to_string()));
        }
        Ok(ServiceToken {
            digest: sha256(token.as_bytes()),
        })
    }

    /// Whether `presented` is the service token (constant time over digests,
    /// so neither content nor length leaks).
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(sha256(presented.as_bytes()).ct_eq(&self.digest))
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The token of an `Authorization: Bearer …` header value, if it is one.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const ISS: &str = "https://issuer.example";
    const AUD: &str = "chokepoint-api";
    const NOW: u64 = 1_800_000_000;

    fn hs_secret() -> Vec<u8> {
        (0u8..32).collect()
    }

    fn hs_verifier() -> Verifier {
        let b64 = base64::engine::general_purpose::STANDARD.encode(hs_secret());
        Verifier::from_bytes(b64.as_bytes(), "key", ISS, AUD).unwrap()
    }

    fn ed_keys() -> (EncodingKey, Verifier) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        use ring::signature::KeyPair as _;
        // SubjectPublicKeyInfo for Ed25519: a fixed prefix and the 32 bytes.
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(pair.public_key().as_ref());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&spki)
        );
        let v = Verifier::from_bytes(pem.as_bytes(), "key", ISS, AUD).unwrap();
        (EncodingKey::from_ed_der(pkcs8.as_ref()), v)
    }

    fn claims() -> Claims {
        Claims {
            sub: "alice".into(),
            org: "acme".into(),
            exp: NOW + 600,
            iat: NOW - 10,
            aud: AUD.into(),
            iss: ISS.into(),
        }
    }

    fn hs(c: &Claims) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            c,
            &EncodingKey::from_secret(&hs_secret()),
        )
        .unwrap()
    }

    #[test]
    fn table() {
        let v = hs_verifier();
        // `verify` checks exp against the real clock through jsonwebtoken, so
        // times are relative to now.
        let now = jsonwebtoken::get_current_timestamp();
        let base = Claims {
            exp: now + 600,
            iat: now - 10,
            ..claims()
        };
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none_token = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&serde_json::to_string(&base).unwrap())
        );
        let (ed_key, _) = ed_keys();
        let ed_token =
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &base, &ed_key).unwrap();
        let wrong_key = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &base,
            &EncodingKey::from_secret(&[7u8; 32]),
        )
        .unwrap();
        let cases: Vec<(&str, String, Result<(), TokenError>)> = vec![
            ("good", hs(&base), Ok(())),
            (
                "expired",
                hs(&Claims {
                    exp: now - 120,
                    iat: now - 700,
                    ..base.clone()
                }),
                Err(TokenError::Expired),
            ),
            (
                "not yet valid",
                hs(&Claims {
                    iat: now + 600,
                    exp: now + 1200,
                    ..base.clone()
                }),
                Err(TokenError::NotYetValid),
            ),
            ("bad signature", wrong_key, Err(TokenError::Signature)),
            ("alg none", none_token, Err(TokenError::Malformed)),
            ("EdDSA against HS256", ed_token, Err(TokenError::Algorithm)),
            (
                "wrong audience",
                hs(&Claims {
                    aud: "other".into(),
                    ..base.clone()
                }),
                Err(TokenError::Audience),
            ),
            (
                "wrong issuer",
                hs(&Claims {
                    iss: "other".into(),
                    ..base.clone()
                }),
                Err(TokenError::Issuer),
            ),
            (
                "empty org",
                hs(&Claims {
                    org: String::new(),
                    ..base.clone()
                }),
                Err(TokenError::Claims),
            ),
            ("garbage", "a.b.c".into(), Err(TokenError::Malformed)),
            ("empty", String::new(), Err(TokenError::Malformed)),
        ];
        for (name, token, want) in cases {
            let got = v.verify(&token, now).map(|_| ());
            assert_eq!(got, want, "case {name}");
        }
    }

    #[test]
    fn hs256_against_ed25519_is_refused() {
        let (key, v) = ed_keys();
        let now = jsonwebtoken::get_current_timestamp();
        let c = Claims {
            exp: now + 600,
            iat: now,
            ..claims()
        };
        let good = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &c, &key).unwrap();
        assert_eq!(v.verify(&good, now).unwrap().org, "acme");
        assert_eq!(v.verify(&hs(&c), now), Err(TokenError::Algorithm));
    }

    #[test]
    fn key_files() {
        assert!(matches!(
            Verifier::from_bytes(b"c2hvcnQ=", "k", ISS, AUD),
            Err(KeyError::BadSecret(_))
        ));
        assert!(matches!(
            Verifier::from_bytes(
                b"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
                "k",
                ISS,
                AUD
            ),
            Err(KeyError::BadPem(_))
        ));
        assert_eq!(hs_verifier().algorithm(), Algorithm::HS256);
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
