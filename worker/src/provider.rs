//! The real token endpoint client: [`HttpProvider`], an OAuth 2.0 refresh
//! (RFC 6749 §6) over the worker's pinned HTTP client.
//!
//! One call: `POST token_url` with the form body
//! `grant_type=refresh_token&refresh_token=…`, client authentication
//! `client_secret_basic` (RFC 6749 §2.3.1: `Authorization: Basic
//! base64(urlencode(client_id):urlencode(client_secret))`), or, for a
//! credential added with `--client-auth client_secret_post`, `client_id`
//! and `client_secret` in the form body instead; `Accept:
//! application/json`. The answer body is read up to [`MAX_ANSWER`] bytes
//! within [`CALL_TIMEOUT`].
//!
//! The connection goes through the same defenses as the tool's: the name
//! is resolved once, every address is checked with `netpolicy::check_addrs`
//! (private, loopback, link-local … refused unless the policy's
//! `unsafe_allow_ranges` lists them), and exactly a checked address is
//! dialed. `https` is required; `http` is accepted only to a loopback IP
//! literal, which the address check then refuses unless the policy allows
//! it (tests). Redirects are never followed.
//!
//! Classification: 200 with an `access_token` = the answer; 400 or 401
//! with an OAuth `error` field = [`ProviderError::OAuth`] (the error code
//! only, sanitized); everything else (transport errors, timeouts, 5xx,
//! 429, other statuses, a malformed answer) = [`ProviderError::Transient`].
//! A credential is declared dead only on an explicit OAuth error.
//!
//! Must never: log or return a token, the client secret or a response body;
//! follow a redirect; dial an address `check_addrs` did not return.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use netpolicy::{Destination, Host, Policy, Scheme};
use secrecy::SecretString;
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use crate::client::PinnedClient;
use crate::refresh::{ClientAuth, Provider, ProviderError, RefreshMaterial, TokenAnswer};

/// Largest token endpoint answer read.
pub const MAX_ANSWER: usize = 64 * 1024;
/// One provider call, end to end (resolve, connect, send, read).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest access token lifetime believed (longer is clamped).
const MAX_EXPIRES_IN: i64 = 366 * 24 * 3600;
/// Longest OAuth error code kept.
const MAX_ERROR_CODE: usize = 64;

/// The token endpoint over HTTP(S), through the pinned client.
pub struct HttpProvider {
    client: Arc<PinnedClient>,
    policy: Arc<Policy>,
    timeout: Duration,
}

fn transient(what: &str) -> ProviderError {
    ProviderError::Transient(what.to_owned())
}

/// The fields of a token endpoint answer that are read; zeroed on drop.
#[derive(Deserialize, Default)]
struct RawAnswer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

impl Drop for RawAnswer {
    fn drop(&mut self) {
        if let Some(t) = self.access_token.as_mut() {
            t.zeroize();
        }
        if let Some(t) = self.refresh_token.as_mut() {
            t.zeroize();
        }
    }
}

/// A token as the worker can use it: printable ASCII, no spaces, bounded.
fn usable_token(t: &str) -> bool {
    !t.is_empty() && t.len() <= 16 * 1024 && t.bytes().all(|b| b.is_ascii_graphic())
}

/// `expires_in`: a number, or a string of digits (some providers); clamped.
fn expires_in(v: Option<&serde_json::Value>) -> Option<i64> {
    let secs = match v? {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))?,
        serde_json::Value::String(s) => s.trim().parse::<i64>().ok()?,
        _ => return None,
    };
    (secs > 0).then_some(secs.min(MAX_EXPIRES_IN))
}

/// The OAuth `error` code, restricted to a safe alphabet (it is logged).
fn error_code(v: &serde_json::Value) -> String {
    match v.as_str() {
        Some(c)
            if !c.is_empty()
                && c.len() <= MAX_ERROR_CODE
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.') =>
        {
            c.to_owned()
        }
        _ => "unrecognized_error".to_owned(),
    }
}

/// Classify a token endpoint answer (status and body). Pure, for tests.
pub fn classify(status: u16, body: &[u8]) -> Result<TokenAnswer, ProviderError> {
    match status {
        200 => {
            let mut raw: RawAnswer =
                serde_json::from_slice(body).map_err(|_| transient("malformed answer"))?;
            let access = raw.access_token.take().unwrap_or_default();
            if !usable_token(&access) {
                let mut access = access;
                access.zeroize();
                return Err(transient("answer without a usable access_token"));
            }
            let refresh = match raw.refresh_token.take() {
                Some(r) if usable_token(&r) => Some(SecretString::from(r)),
                Some(mut r) if r.is_empty() => {
                    r.zeroize();
                    None
                }
                Some(mut r) => {
                    r.zeroize();
                    return Err(transient("answer with an unusable refresh_token"));
                }
                None => None,
            };
            Ok(TokenAnswer {
                access_token: SecretString::from(access),
                refresh_token: refresh,
                expires_in: expires_in(raw.expires_in.as_ref()),
            })
        }
        400 | 401 => {
            let raw: Option<RawAnswer> = serde_json::from_slice(body).ok();
            match raw.as_ref().and_then(|r| r.error.as_ref()) {
                Some(code) => Err(ProviderError::OAuth(error_code(code))),
                None => Err(ProviderError::Transient(format!(
                    "status {status} without an OAuth error"
                ))),
            }
        }
        s => Err(ProviderError::Transient(format!("status {s}"))),
    }
}

/// Check a token URL before any connection: https, or http to a loopback
/// IP literal. Returns the parsed target.
pub fn parse_token_url(token_url: &str) -> Result<netpolicy::ParsedUrl, ProviderError> {
    let parsed = Destination::parse_url(token_url).map_err(|_| transient("invalid token url"))?;
    match (&parsed.dest.scheme, &parsed.dest.host) {
        (Scheme::Https, _) => Ok(parsed),
        (Scheme::Http, Host::Ip(ip)) if ip.is_loopback() => Ok(parsed),
        _ => Err(transient("token url must be https")),
    }
}

/// RFC 6749 §2.3.1: both parts form-urlencoded, then `id:secret` in base64.
fn basic_auth(m: &RefreshMaterial) -> Zeroizing<String> {
    let enc = |s: &str| {
        Zeroizing::new(url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>())
    };
    let pair = Zeroizing::new(format!(
        "{}:{}",
        enc(&m.client_id).as_str(),
        enc(&m.client_secret).as_str()
    ));
    Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
    ))
}

impl HttpProvider {
    /// A provider dialing through `client`, with addresses checked against
    /// `policy`.
    pub fn new(client: Arc<PinnedClient>, policy: Arc<Policy>) -> HttpProvider {
        HttpProvider {
            client,
            policy,
            timeout: CALL_TIMEOUT,
        }
    }

    /// The same with another end-to-end call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> HttpProvider {
        self.timeout = timeout;
        self
    }

    async fn call(
        &self,
        token_url: &str,
        m: &RefreshMaterial,
    ) -> Result<TokenAnswer, ProviderError> {
        let parsed = parse_token_url(token_url)?;
        let addrs = self
            .client
            .resolve(&self.policy, &parsed.dest)
            .await
            .map_err(|r| ProviderError::Transient(format!("token endpoint: {}", r.as_str())))?;
        // The serializer is not `Send`: done before the next await.
        let (form, auth_value) = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", &m.refresh_token);
            let auth_value = match m.client_auth {
                ClientAuth::ClientSecretBasic => {
                    let auth = basic_auth(m);
                    let mut v = http::HeaderValue::from_str(&auth)
                        .map_err(|_| transient("bad client credentials"))?;
                    v.set_sensitive(true);
                    Some(v)
                }
                ClientAuth::ClientSecretPost => {
                    form.append_pair("client_id", &m.client_id)
                        .append_pair("client_secret", &m.client_secret);
                    None
                }
            };
            (Zeroizing::new(form.finish()), auth_value)
        };
        let default_port = if parsed.dest.scheme == Scheme::Https {
            443
        } else {
            80
        };
        let host = if parsed.dest.port == default_port {
            parsed.dest.host.to_string()
        } else {
            parsed.dest.authority()
        };
        let mut req = http::Request::builder()
            .method(http::Method::POST)
            .uri(parsed.origin_form.as_str())
            .header(http::header::HOST, host)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::ACCEPT_ENCODING, "identity")
            .header(http::header::USER_AGENT, "chokepoint-worker");
        if let Some(v) = auth_value {
            req = req.header(http::header::AUTHORIZATION, v);
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(form.as_bytes())))
            .map_err(|_| transient("cannot build the request"))?;
        let resp = self
            .client
            .send(&parsed.dest, &addrs, req)
            .await
            .map_err(|r| ProviderError::Transient(format!("token endpoint: {}", r.as_str())))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut buf = Zeroizing::new(Vec::new());
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| transient("token endpoint: answer broken off"))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > MAX_ANSWER {
                    return Err(transient("token endpoint: answer over the size limit"));
                }
                buf.extend_from_slice(&data);
            }
        }
        classify(status, &buf)
    }
}

#[async_trait]
impl Provider for HttpProvider {
    async fn refresh(
        &self,
        token_url: &str,
        m: &RefreshMaterial,
    ) -> Result<TokenAnswer, ProviderError> {
        match tokio::time::timeout(self.timeout, self.call(token_url, m)).await {
            Ok(r) => r,
            Err(_) => Err(transient("token endpoint: timeout")),
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn classify_answers() {
        let ok = classify(
            200,
            br#"{"access_token":"at-1","refresh_token":"rt-2","expires_in":3600,"token_type":"Bearer"}"#,
        )
        .unwrap();
        assert_eq!(ok.access_token.expose_secret(), "at-1");
        assert_eq!(ok.refresh_token.unwrap().expose_secret(), "rt-2");
        assert_eq!(ok.expires_in, Some(3600));
        let no_rotation = classify(200, br#"{"access_token":"at-1","expires_in":"60"}"#).unwrap();
        assert!(no_rotation.refresh_token.is_none());
        assert_eq!(no_rotation.expires_in, Some(60));
        let no_expiry = classify(200, br#"{"access_token":"at-1","expires_in":-5}"#).unwrap();
        assert_eq!(no_expiry.expires_in, None);
        for bad in [
            &b"not json"[..],
            br#"{"refresh_token":"rt"}"#,
            br#"{"access_token":""}"#,
            br#"{"access_token":"a b"}"#,
            br#"{"access_token":"at","refresh_token":"r\nt"}"#,
            br#"{"access_token":7}"#,
        ] {
            assert!(
                matches!(classify(200, bad), Err(ProviderError::Transient(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            classify(400, br#"{"error":"invalid_grant","error_description":"x"}"#).err(),
            Some(ProviderError::OAuth("invalid_grant".into()))
        );
        assert_eq!(
            classify(401, br#"{"error":"invalid_client"}"#).err(),
            Some(ProviderError::OAuth("invalid_client".into()))
        );
        // A code outside the safe alphabet is not repeated (it is logged).
        assert_eq!(
            classify(400, br#"{"error":"rt-secret with spaces"}"#).err(),
            Some(ProviderError::OAuth("unrecognized_error".into()))
        );
        for (status, body) in [
            (400, &b"<html>bad</html>"[..]),
            (401, b""),
            (429, br#"{"error":"slow_down"}"#),
            (500, br#"{"error":"server_error"}"#),
            (503, b""),
            (302, b""),
            (404, b""),
        ] {
            assert!(
                matches!(classify(status, body), Err(ProviderError::Transient(_))),
                "{status}"
            );
        }
    }

    #[test]
    fn token_url_must_be_https_or_loopback_http() {
        assert!(parse_token_url("https://oauth.example.com/token").is_ok());
        assert!(parse_token_url("http://127.0.0.2:8080/token").is_ok());
        assert!(parse_token_url("http://[::1]:8080/token").is_ok());
        for bad in [
            "http://oauth.example.com/token",
            "http://10.0.0.1/token",
            "ftp://127.0.0.1/token",
            "not a url",
        ] {
            assert!(parse_token_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn basic_auth_encodes_both_parts() {
        let m = RefreshMaterial {
            refresh_token: "rt".into(),
            client_id: "my client".into(),
            client_secret: "s:e/c+r".into(),
            client_auth: ClientAuth::ClientSecretBasic,
        };
        let v = basic_auth(&m);
        let b64 = v.strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(decoded, b"my+client:s%3Ae%2Fc%2Br");
    }
}
