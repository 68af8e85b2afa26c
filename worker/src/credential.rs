//! Credentials: sealing a token into a row, opening it at request time,
//! rewrapping it under a new master key, and the header template.
//!
//! Must never: put a token in an error, a `Debug` or a log line; accept a
//! token or template that could split a header (CR, LF, NUL).

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::crypto::{Binding, CryptoError, Keyring, to_hex};
use crate::store::CredentialRecord;

/// The sealed field holding the access token.
pub const TOKEN_FIELD: &str = "token";

/// The sealed field holding the refresh material (JSON).
pub const REFRESH_FIELD: &str = "refresh";

/// The default header template.
pub const DEFAULT_HEADER: &str = "Authorization: Bearer {token}";

/// Why a credential input was refused. Never carries the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialInputError {
    /// The token is empty.
    #[error("the token is empty; pipe it on stdin")]
    EmptyToken,
    /// The token holds a byte that cannot go in a header.
    #[error(
        "the token contains a control character (CR, LF, NUL, ...) or non-ASCII byte; a header value cannot carry it"
    )]
    BadTokenByte,
    /// The template is not `Name: value with {token}`.
    #[error(
        "invalid --header `{0}`: write `Name: value` with exactly one `{{token}}` in the value, e.g. `Authorization: Bearer {{token}}`"
    )]
    BadTemplate(String),
}

/// A header template: the header name and a value containing `{token}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTemplate {
    /// Lowercase header name.
    pub name: String,
    /// The value with one `{token}`.
    pub value: String,
}

impl HeaderTemplate {
    /// Parse `Name: value {token}`.
    pub fn parse(s: &str) -> Result<HeaderTemplate, CredentialInputError> {
        let bad = || CredentialInputError::BadTemplate(s.to_owned());
        let (name, value) = s.split_once(':').ok_or_else(bad)?;
        let name = name.trim();
        let value = value.trim();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || value.matches("{token}").count() != 1
            || value.bytes().any(|b| b.is_ascii_control() || !b.is_ascii())
        {
            return Err(bad());
        }
        Ok(HeaderTemplate {
            name: name.to_ascii_lowercase(),
            value: value.to_owned(),
        })
    }

    /// The header value with the token substituted, in a zeroed buffer.
    pub fn render(&self, token: &SecretString) -> Result<Zeroizing<String>, CredentialInputError> {
        check_token(token.expose_secret())?;
        Ok(Zeroizing::new(self.value.replacen(
            "{token}",
            token.expose_secret(),
            1,
        )))
    }
}

/// Refuse a token that cannot travel in a header value.
pub fn check_token(token: &str) -> Result<(), CredentialInputError> {
    if token.is_empty() {
        return Err(CredentialInputError::EmptyToken);
    }
    if token.bytes().any(|b| b.is_ascii_control() || !b.is_ascii()) {
        return Err(CredentialInputError::BadTokenByte);
    }
    Ok(())
}

/// A random id: 16 bytes from the OS CSPRNG, hex.
pub fn new_id(keys: &Keyring) -> Result<String, CryptoError> {
    let mut b = [0u8; 16];
    keys.random(&mut b)?;
    Ok(to_hex(&b))
}

/// Seal a new credential row (version 1).
pub fn seal_new(
    keys: &Keyring,
    org: &str,
    integration: &str,
    template: &HeaderTemplate,
    token: &SecretString,
    now: i64,
) -> Result<CredentialRecord, CryptoError> {
    let id = new_id(keys)?;
    let version = 1;
    let at = Binding {
        org,
        credential_id: &id,
        version,
    };
    let (dk, wrapped_key) = keys.new_data_key(&at)?;
    let token_ct = dk.seal(&at, TOKEN_FIELD, token.expose_secret().as_bytes())?;
    Ok(CredentialRecord {
        id,
        org: org.to_owned(),
        integration: integration.to_owned(),
        header_name: template.name.clone(),
        header_template: template.value.clone(),
        wrapped_key,
        token_ct,
        version,
        created_at: now,
        updated_at: now,
        refresh_ct: None,
        token_url: None,
        access_expires_at: None,
        generation: 0,
        status: crate::store::ACTIVE.to_owned(),
    })
}

/// Open a row's access token.
pub fn open_token(keys: &Keyring, c: &CredentialRecord) -> Result<SecretString, CryptoError> {
    let at = Binding {
        org: &c.org,
        credential_id: &c.id,
        version: c.version,
    };
    let dk = keys.unwrap_data_key(&at, &c.wrapped_key)?;
    let plain = dk.open(&at, TOKEN_FIELD, &c.token_ct)?;
    let text = std::str::from_utf8(&plain).map_err(|_| CryptoError::Decrypt)?;
    Ok(SecretString::from(text.to_owned()))
}

/// Open a row's refresh material (JSON, zeroed on drop).
pub fn open_refresh(
    keys: &Keyring,
    c: &CredentialRecord,
) -> Result<Zeroizing<String>, CryptoError> {
    let at = Binding {
        org: &c.org,
        credential_id: &c.id,
        version: c.version,
    };
    let dk = keys.unwrap_data_key(&at, &c.wrapped_key)?;
    let ct = c.refresh_ct.as_deref().ok_or(CryptoError::Decrypt)?;
    let plain = dk.open(&at, REFRESH_FIELD, ct)?;
    let text = std::str::from_utf8(&plain).map_err(|_| CryptoError::Decrypt)?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// The row re-sealed under the active master key with a fresh data key, at
/// version + 1 (store it with `update_credential_secret(.., c.version)`).
pub fn rewrap(
    keys: &Keyring,
    c: &CredentialRecord,
    now: i64,
) -> Result<CredentialRecord, CryptoError> {
    let token = open_token(keys, c)?;
    let version = c.version + 1;
    let at = Binding {
        org: &c.org,
        credential_id: &c.id,
        version,
    };
    let (dk, wrapped_key) = keys.new_data_key(&at)?;
    let token_ct = dk.seal(&at, TOKEN_FIELD, token.expose_secret().as_bytes())?;
    let refresh_ct = match &c.refresh_ct {
        Some(_) => {
            let r = open_refresh(keys, c)?;
            Some(dk.seal(&at, REFRESH_FIELD, r.as_bytes())?)
        }
        None => None,
    };
    Ok(CredentialRecord {
        wrapped_key,
        token_ct,
        refresh_ct,
        version,
        updated_at: now,
        ..c.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = HeaderTemplate::parse("Authorization: Bearer {token}").unwrap();
        assert_eq!(t.name, "authorization");
        assert_eq!(t.value, "Bearer {token}");
        assert!(HeaderTemplate::parse("X-Api-Key: {token}").is_ok());
        for bad in [
            "Authorization Bearer {token}",
            "Authorization: Bearer",
            "Authorization: {token} {token}",
            "Bad Name: {token}",
            "X: a\r\nY: {token}",
        ] {
            assert!(HeaderTemplate::parse(bad).is_err(), "{bad}");
        }
        let tok = SecretString::from("abc\r\nX-Evil: 1".to_owned());
        assert_eq!(t.render(&tok), Err(CredentialInputError::BadTokenByte));
        let tok = SecretString::from("good-token".to_owned());
        assert_eq!(t.render(&tok).unwrap().as_str(), "Bearer good-token");
    }

    #[test]
    fn seal_open_rewrap() {
        let k1 = Keyring::from_keys(&[[1u8; 32]]).unwrap();
        let t = HeaderTemplate::parse(DEFAULT_HEADER).unwrap();
        let tok = SecretString::from("tok-123456789".to_owned());
        let c = seal_new(&k1, "acme", "calendar", &t, &tok, 10).unwrap();
        assert_eq!(
            open_token(&k1, &c).unwrap().expose_secret(),
            "tok-123456789"
        );
        assert!(!format!("{c:?}").contains("tok-"));
        let k2 = Keyring::from_keys(&[[2u8; 32], [1u8; 32]]).unwrap();
        let c2 = rewrap(&k2, &c, 11).unwrap();
        assert_eq!(c2.version, 2);
        assert_eq!(c2.wrapped_key.key_id, k2.active_id());
        let only_new = Keyring::from_keys(&[[2u8; 32]]).unwrap();
        assert_eq!(
            open_token(&only_new, &c2).unwrap().expose_secret(),
            "tok-123456789"
        );
        assert!(open_token(&only_new, &c).is_err());
        // Swap the ciphertexts of two rows: neither opens.
        let d = seal_new(&k1, "acme", "mail", &t, &tok, 10).unwrap();
        let mut swapped = c.clone();
        swapped.token_ct = d.token_ct.clone();
        assert!(open_token(&k1, &swapped).is_err());
        let mut swapped = c.clone();
        swapped.wrapped_key = d.wrapped_key.clone();
        assert!(open_token(&k1, &swapped).is_err());
    }
}
