//! Encryption at rest and the handle hash.
//!
//! Envelope encryption with AES-256-GCM (`ring::aead`):
//! - every credential row has its own random 256-bit **data key**;
//! - the data key is stored **wrapped** (encrypted) by a **master key**, and
//!   the row names that master key by its **key id** (the first 8 bytes of
//!   HMAC-SHA256(master, "chokepoint key id v1"), in hex: it identifies the
//!   key without revealing it);
//! - each secret field of the row (the access token today; refresh token and
//!   client secret later) is sealed with the data key.
//!
//! The associated data of every seal binds the ciphertext to its place: the
//! org, the credential id, the field name and the row version. A blob copied
//! into another row, another field or an older version does not open.
//!
//! A [`Keyring`] holds the active master key (used for every new seal) and
//! older ones (only to open rows not yet rewrapped by `rotate-key`).
//!
//! Handles are stored as HMAC-SHA256 under a key derived from the master key
//! ([`Keyring::handle_hashes`]), so a stolen database holds nothing that can
//! be presented to the worker.
//!
//! Must never: print, log or `Debug` a key or a plaintext; panic on a bad
//! key file or a bad blob (each is a [`CryptoError`]).

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Length of a master or data key in bytes.
pub const KEY_LEN: usize = 32;
/// Format byte at the start of every sealed blob.
const BLOB_V1: u8 = 1;
/// Field name used for the wrapped data key's associated data.
const DATA_KEY_FIELD: &str = "data_key";

/// A crypto failure. Messages never contain key or plaintext bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The master key file could not be read.
    #[error("cannot read the master key file {path}: {source}")]
    KeyFileRead {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The master key file does not hold base64 of 32 bytes per line.
    #[error(
        "the master key file {path} is invalid: line {line} is not base64 of 32 bytes; create one with `head -c 32 /dev/urandom | base64`"
    )]
    KeyFileFormat {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
    },
    /// The master key file holds no key.
    #[error("the master key file {path} holds no key")]
    KeyFileEmpty {
        /// The file.
        path: String,
    },
    /// The row was wrapped by a master key that is not in the keyring.
    #[error(
        "credential is encrypted with master key {key_id}, which is not loaded (wrong CHOKEPOINT_MASTER_KEY_FILE?)"
    )]
    UnknownKey {
        /// The key id named by the row.
        key_id: String,
    },
    /// Authentication failed: wrong key, or the blob was altered or moved.
    #[error(
        "decryption failed: wrong master key, or the ciphertext was altered or copied from another row"
    )]
    Decrypt,
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// Where a sealed value lives: the associated data binds it to this place.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// The org id.
    pub org: &'a str,
    /// The credential id.
    pub credential_id: &'a str,
    /// The row version the value was sealed for.
    pub version: i64,
}

impl Binding<'_> {
    fn aad(&self, field: &str) -> Vec<u8> {
        // Org ids and credential ids never contain NUL, so this is unambiguous.
        format!(
            "chokepoint.v1\0{}\0{}\0{}\0{}",
            self.org, self.credential_id, field, self.version
        )
        .into_bytes()
    }
}

/// One master key and its id.
struct MasterKey {
    id: String,
    aead: LessSafeKey,
    handle_key: hmac::Key,
}

impl MasterKey {
    fn new(bytes: &[u8; KEY_LEN]) -> Result<MasterKey, CryptoError> {
        let raw = hmac::Key::new(hmac::HMAC_SHA256, bytes);
        let id_tag = hmac::sign(&raw, b"chokepoint key id v1");
        let id = hex(id_tag.as_ref().get(..8).unwrap_or_default());
        let handle_tag = hmac::sign(&raw, b"chokepoint handle key v1");
        let handle_key = hmac::Key::new(hmac::HMAC_SHA256, handle_tag.as_ref());
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| CryptoError::Decrypt)?;
        Ok(MasterKey {
            id,
            aead: LessSafeKey::new(unbound),
            handle_key,
        })
    }
}

/// The loaded master keys: the first is active, the rest only open old rows.
pub struct Keyring {
    keys: Vec<MasterKey>,
    rng: SystemRandom,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

impl Keyring {
    /// Read a key file: one key per line, base64 of 32 bytes; the first line
    /// is the active key. Blank lines and `#` comments are ignored.
    pub fn load(path: &Path) -> Result<Keyring, CryptoError> {
        let shown = path.display().to_string();
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            CryptoError::KeyFileRead {
                path: shown.clone(),
                source,
            }
        })?);
        Self::parse(&text, &shown)
    }

    /// Parse key file text (see [`Keyring::load`]); `shown` names it in errors.
    pub fn parse(text: &str, shown: &str) -> Result<Keyring, CryptoError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || CryptoError::KeyFileFormat {
                path: shown.to_owned(),
                line: i + 1,
            };
            let bytes = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(line)
                    .map_err(|_| bad())?,
            );
            let arr: Zeroizing<[u8; KEY_LEN]> =
                Zeroizing::new(bytes.as_slice().try_into().map_err(|_| bad())?);
            keys.push(MasterKey::new(&arr)?);
        }
        if keys.is_empty() {
            return Err(CryptoError::KeyFileEmpty {
                path: shown.to_owned(),
            });
        }
        Ok(Keyring {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// A keyring of exactly these keys (the first active). For tests and tools.
    pub fn from_keys(keys: &[[u8; KEY_LEN]]) -> Result<Keyring, CryptoError> {
        let keys = keys
            .iter()
            .map(MasterKey::new)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(CryptoError::KeyFileEmpty {
                path: "<memory>".into(),
            });
        }
        Ok(Keyring {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// This keyring followed by `older`'s keys (duplicates dropped): the
    /// active key stays this one's.
    #[must_use]
    pub fn then(mut self, older: Keyring) -> Keyring {
        for k in older.keys {
            if !self.keys.iter().any(|m| m.id == k.id) {
                self.keys.push(k);
            }
        }
        self
    }

    /// The ids of the loaded keys, active first.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// The active key's id.
    pub fn active_id(&self) -> &str {
        self.keys.first().map_or("", |k| k.id.as_str())
    }

    fn active(&self) -> Result<&MasterKey, CryptoError> {
        self.keys.first().ok_or(CryptoError::KeyFileEmpty {
            path: "<memory>".into(),
        })
    }

    /// Fill `buf` from the OS CSPRNG.
    pub fn random(&self, buf: &mut [u8]) -> Result<(), CryptoError> {
        self.rng.fill(buf).map_err(|_| CryptoError::Random)
    }

    /// A fresh data key for the row at `at`, and its wrapped form under the
    /// active master key.
    pub fn new_data_key(&self, at: &Binding<'_>) -> Result<(DataKey, WrappedKey), CryptoError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        self.random(key.as_mut_slice())?;
        let master = self.active()?;
        let blob = seal_with(
            &self.rng,
            &master.aead,
            &at.aad(DATA_KEY_FIELD),
            key.as_slice(),
        )?;
        let data = DataKey::new(&key)?;
        Ok((
            data,
            WrappedKey {
                key_id: master.id.clone(),
                blob,
            },
        ))
    }

    /// Unwrap a row's data key with whichever loaded master key it names.
    pub fn unwrap_data_key(
        &self,
        at: &Binding<'_>,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, CryptoError> {
        let master = self
            .keys
            .iter()
            .find(|k| k.id == wrapped.key_id)
            .ok_or_else(|| CryptoError::UnknownKey {
                key_id: wrapped.key_id.clone(),
            })?;
        let plain = open_with(&master.aead, &at.aad(DATA_KEY_FIELD), &wrapped.blob)?;
        let arr: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(
            plain
                .as_slice()
                .try_into()
                .map_err(|_| CryptoError::Decrypt)?,
        );
        DataKey::new(&arr)
    }

    /// The keyed hashes of a handle, one per loaded master key, active first.
    /// The store keeps the active one; lookups try each.
    pub fn handle_hashes(&self, handle: &str) -> Vec<Vec<u8>> {
        self.keys
            .iter()
            .map(|k| {
                hmac::sign(&k.handle_key, handle.as_bytes())
                    .as_ref()
                    .to_vec()
            })
            .collect()
    }

    /// The active key's hash of a handle (what the store keeps).
    pub fn handle_hash(&self, handle: &str) -> Vec<u8> {
        self.handle_hashes(handle)
            .into_iter()
            .next()
            .unwrap_or_default()
    }
}

/// A data key wrapped by a master key.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The id of the master key that wrapped it.
    pub key_id: String,
    /// Nonce, ciphertext and tag.
    pub blob: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("key_id", &self.key_id)
            .field("len", &self.blob.len())
            .finish()
    }
}

/// A row's data key, in memory only.
pub struct DataKey {
    aead: LessSafeKey,
    rng: SystemRandom,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    fn new(key: &[u8; KEY_LEN]) -> Result<DataKey, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| CryptoError::Decrypt)?;
        Ok(DataKey {
            aead: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// Seal `plaintext` as `field` of the row at `at`.
    pub fn seal(
        &self,
        at: &Binding<'_>,
        field: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        seal_with(&self.rng, &self.aead, &at.aad(field), plaintext)
    }

    /// Open `field` of the row at `at`.
    pub fn open(
        &self,
        at: &Binding<'_>,
        field: &str,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        open_with(&self.aead, &at.aad(field), blob)
    }
}

/// `1 || nonce || ciphertext || tag`.
fn seal_with(
    rng: &SystemRandom,
    key: &LessSafeKey,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
    let mut in_out = Zeroizing::new(plaintext.to_vec());
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut *in_out,
    )
    .map_err(|_| CryptoError::Random)?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
    out.push(BLOB_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&in_out);
    Ok(out)
}

fn open_with(
    key: &LessSafeKey,
    aad: &[u8],
    blob: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let (&format, rest) = blob.split_first().ok_or(CryptoError::Decrypt)?;
    if format != BLOB_V1 || rest.len() < NONCE_LEN {
        return Err(CryptoError::Decrypt);
    }
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Decrypt)?;
    let mut in_out = Zeroizing::new(sealed.to_vec());
    let plain_len = key
        .open_in_place(nonce, Aad::from(aad), &mut in_out)
        .map_err(|_| CryptoError::Decrypt)?
        .len();
    in_out.truncate(plain_len);
    Ok(in_out)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Lowercase hex of `bytes` (ids).
pub fn to_hex(bytes: &[u8]) -> String {
    hex(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(version: i64) -> Binding<'static> {
        Binding {
            org: "acme",
            credential_id: "c1",
            version,
        }
    }

    #[test]
    fn round_trip() {
        let ring = Keyring::from_keys(&[[1u8; 32]]).unwrap();
        let (dk, wrapped) = ring.new_data_key(&at(1)).unwrap();
        let blob = dk.seal(&at(1), "token", b"secret-token-value").unwrap();
        assert!(
            !blob
                .windows(b"secret-token-value".len())
                .any(|w| w == b"secret-token-value")
        );
        let dk2 = ring.unwrap_data_key(&at(1), &wrapped).unwrap();
        assert_eq!(
            dk2.open(&at(1), "token", &blob).unwrap().as_slice(),
            b"secret-token-value"
        );
    }

    #[test]
    fn aad_swap_fails() {
        let ring = Keyring::from_keys(&[[1u8; 32]]).unwrap();
        let (dk, wrapped) = ring.new_data_key(&at(1)).unwrap();
        let blob = dk.seal(&at(1), "token", b"secret-token-value").unwrap();
        // Another field, version, org or credential: no.
        assert!(matches!(
            dk.open(&at(1), "refresh_token", &blob),
            Err(CryptoError::Decrypt)
        ));
        assert!(dk.open(&at(2), "token", &blob).is_err());
        let other_org = Binding {
            org: "globex",
            ..at(1)
        };
        assert!(dk.open(&other_org, "token", &blob).is_err());
        let other_cred = Binding {
            credential_id: "c2",
            ..at(1)
        };
        assert!(dk.open(&other_cred, "token", &blob).is_err());
        assert!(ring.unwrap_data_key(&other_cred, &wrapped).is_err());
        // A flipped bit: no.
        let mut bad = blob.clone();
        if let Some(b) = bad.last_mut() {
            *b ^= 1;
        }
        assert!(dk.open(&at(1), "token", &bad).is_err());
        assert!(dk.open(&at(1), "token", &[]).is_err());
        assert!(dk.open(&at(1), "token", &[1, 2, 3]).is_err());
    }

    #[test]
    fn wrong_key_fails() {
        let ring = Keyring::from_keys(&[[1u8; 32]]).unwrap();
        let other = Keyring::from_keys(&[[2u8; 32]]).unwrap();
        let (_, wrapped) = ring.new_data_key(&at(1)).unwrap();
        assert!(matches!(
            other.unwrap_data_key(&at(1), &wrapped),
            Err(CryptoError::UnknownKey { .. })
        ));
        // Same id claimed, different key: authentication fails.
        let forged = WrappedKey {
            key_id: other.active_id().to_owned(),
            blob: wrapped.blob.clone(),
        };
        assert!(matches!(
            other.unwrap_data_key(&at(1), &forged),
            Err(CryptoError::Decrypt)
        ));
        // An old key still in the ring opens old rows.
        let both = Keyring::from_keys(&[[2u8; 32], [1u8; 32]]).unwrap();
        assert!(both.unwrap_data_key(&at(1), &wrapped).is_ok());
    }

    #[test]
    fn key_file_errors_are_clear() {
        assert!(matches!(
            Keyring::parse("", "k"),
            Err(CryptoError::KeyFileEmpty { .. })
        ));
        assert!(matches!(
            Keyring::parse("not base64!\n", "k"),
            Err(CryptoError::KeyFileFormat { line: 1, .. })
        ));
        let short = base64::engine::general_purpose::STANDARD.encode([0u8; 16]);
        let e = Keyring::parse(&format!("# c\n\n{short}\n"), "k").unwrap_err();
        assert!(matches!(e, CryptoError::KeyFileFormat { line: 3, .. }));
        assert!(!e.to_string().contains(&short));
        let good = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let ring = Keyring::parse(&format!("{good}\n"), "k").unwrap();
        assert_eq!(ring.active_id().len(), 16);
        assert!(!format!("{ring:?}").contains(&good));
    }

    #[test]
    fn handle_hash_is_keyed() {
        let a = Keyring::from_keys(&[[1u8; 32]]).unwrap();
        let b = Keyring::from_keys(&[[2u8; 32]]).unwrap();
        assert_ne!(a.handle_hash("cph_x"), b.handle_hash("cph_x"));
        assert_eq!(a.handle_hash("cph_x"), a.handle_hash("cph_x"));
        assert_eq!(a.handle_hash("cph_x").len(), 32);
    }
}
