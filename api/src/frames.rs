//! WebSocket frames: the client frames the server accepts, the server frames
//! it sends, and the close codes. Pure functions over bytes, no I/O.
//!
//! Client frames are JSON text, at most [`MAX_FRAME_BYTES`]:
//! `{"type":"message","id":"<client id>","text":"…"}` (a write, acked after
//! its commit) and `{"type":"auth","token":"<jwt>"}` (in-band
//! re-authentication before the token expires). Anything else — binary, bad
//! JSON, an unknown type, unknown or missing fields — is a [`FrameError`]
//! whose [`FrameError::close_code`] closes the socket.

use serde::{Deserialize, Serialize};

/// Largest frame either side sends or accepts (1 MiB).
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// The transport's hard limit (twice [`MAX_FRAME_BYTES`]): a frame up to
/// here is read whole and refused by the decoder with a clean 1009; a larger
/// one is cut off at the frame header (1009 sent best effort, the rest of
/// the frame never read).
pub const TRANSPORT_LIMIT: usize = 2 * MAX_FRAME_BYTES;
/// Longest client id.
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// Close codes (RFC 6455 §7.4 and the private range).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// A binary frame (only JSON text is accepted).
    pub const UNSUPPORTED: u16 = 1003;
    /// A text frame that is not a valid client frame.
    pub const INVALID: u16 = 1007;
    /// A frame the server refuses by policy (unknown type, wrong identity).
    pub const POLICY: u16 = 1008;
    /// A frame larger than 1 MiB.
    pub const TOO_BIG: u16 = 1009;
    /// The store failed.
    pub const INTERNAL: u16 = 1011;
    /// The client read too slowly and its bounded buffer overflowed.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The token expired (and was not renewed in band).
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The user's tokens or org membership were revoked.
    pub const REVOKED: u16 = 4003;
}

/// A frame from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// A write: enqueue `text` under the idempotency key (conversation, `id`).
    Message {
        /// The client's id.
        id: String,
        /// The text.
        text: String,
    },
    /// In-band re-authentication with a fresh token.
    Auth {
        /// The JWT.
        token: String,
    },
}

/// Why a client frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A binary frame.
    #[error("binary frames are not accepted; send JSON text")]
    Binary,
    /// Larger than [`MAX_FRAME_BYTES`].
    #[error("frame larger than 1 MiB")]
    TooBig,
    /// Not a JSON object with a string `type`.
    #[error("frame is not a JSON object with a \"type\"")]
    Malformed,
    /// A `type` the server does not know.
    #[error("unknown frame type")]
    UnknownType,
    /// A known type with missing, extra or invalid fields.
    #[error("invalid {0} frame")]
    Invalid(&'static str),
}

impl FrameError {
    /// The close code this error ends the socket with.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Binary => close::UNSUPPORTED,
            FrameError::TooBig => close::TOO_BIG,
            FrameError::Malformed | FrameError::Invalid(_) => close::INVALID,
            FrameError::UnknownType => close::POLICY,
        }
    }
}

#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a>,
}

type Cow<'a> = std::borrow::Cow<'a, str>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    #[serde(rename = "type")]
    _kind: String,
    id: String,
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(rename = "type")]
    _kind: String,
    token: String,
}

/// Whether `id` is a valid client id: 1..=128 of `[A-Za-z0-9._:-]`.
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CLIENT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Decode one text frame.
pub fn decode_text(text: &str) -> Result<ClientFrame, FrameError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooBig);
    }
    let typed: Typed<'_> = serde_json::from_str(text).map_err(|_| FrameError::Malformed)?;
    match typed.kind.as_ref() {
        "message" => {
            let m: RawMessage =
                serde_json::from_str(text).map_err(|_| FrameError::Invalid("message"))?;
            if !valid_client_id(&m.id) {
                return Err(FrameError::Invalid("message"));
            }
            Ok(ClientFrame::Message {
                id: m.id,
                text: m.text,
            })
        }
        "auth" => {
            let a: RawAuth = serde_json::from_str(text).map_err(|_| FrameError::Invalid("auth"))?;
            Ok(ClientFrame::Auth { token: a.token })
        }
        _ => Err(FrameError::UnknownType),
    }
}

/// Decode a binary frame: always refused.
pub fn decode_binary(_data: &[u8]) -> Result<ClientFrame, FrameError> {
    Err(FrameError::Binary)
}

/// A frame from the server.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// The message with this client id is committed to the queue.
    Ack {
        /// The client's id.
        id: &'a str,
    },
    /// A conversation event.
    Event {
        /// Its sequence number in the conversation.
        seq: i64,
        /// The (scrubbed) event.
        data: &'a serde_json::value::RawValue,
    },
    /// In-band re-authentication accepted; the socket now lives until `exp`.
    AuthOk {
        /// The new token's expiry, Unix seconds.
        exp: u64,
    },
    /// Sent just before a close, with the reason in words.
    Error {
        /// A snake_case code.
        code: &'a str,
        /// What went wrong.
        message: &'a str,
    },
}

impl ServerFrame<'_> {
    /// The JSON text of this frame.
    pub fn to_text(&self) -> String {
        // Serializing these plain structs cannot fail; fall back to a fixed
        // error frame rather than panic.
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"type":"error","code":"internal","message":"encoding"}"#.into())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        let cases: &[(&str, Result<ClientFrame, FrameError>)] = &[
            (
                r#"{"type":"message","id":"m-1","text":"hi"}"#,
                Ok(ClientFrame::Message {
                    id: "m-1".into(),
                    text: "hi".into(),
                }),
            ),
            (
                r#"{"type":"auth","token":"x.y.z"}"#,
                Ok(ClientFrame::Auth {
                    token: "x.y.z".into(),
                }),
            ),
            ("not json", Err(FrameError::Malformed)),
            ("[]", Err(FrameError::Malformed)),
            (r#"{"type":1}"#, Err(FrameError::Malformed)),
            (
                r#"{"type":"shell","cmd":"rm"}"#,
                Err(FrameError::UnknownType),
            ),
            (
                r#"{"type":"message","id":"a"}"#,
                Err(FrameError::Invalid("message")),
            ),
            (
                r#"{"type":"message","id":"","text":"x"}"#,
                Err(FrameError::Invalid("message")),
            ),
            (
                r#"{"type":"message","id":"a b","text":"x"}"#,
                Err(FrameError::Invalid("message")),
            ),
            (
                r#"{"type":"message","id":"a","text":"x","org":"other"}"#,
                Err(FrameError::Invalid("message")),
            ),
            (r#"{"type":"auth"}"#, Err(FrameError::Invalid("auth"))),
        ];
        for (text, want) in cases {
            assert_eq!(&decode_text(text), want, "{text}");
        }
        let big = format!(
            r#"{{"type":"message","id":"a","text":"{}"}}"#,
            "x".repeat(MAX_FRAME_BYTES)
        );
        assert_eq!(decode_text(&big), Err(FrameError::TooBig));
        assert_eq!(decode_binary(b"{}"), Err(FrameError::Binary));
        assert_eq!(FrameError::Binary.close_code(), 1003);
        assert_eq!(FrameError::TooBig.close_code(), 1009);
    }

    #[test]
    fn server_frames() {
        assert_eq!(
            ServerFrame::Ack { id: "m-1" }.to_text(),
            r#"{"type":"ack","id":"m-1"}"#
        );
        let data = serde_json::value::RawValue::from_string(r#"{"k":[1,2]}"#.into()).unwrap();
        assert_eq!(
            ServerFrame::Event {
                seq: 7,
                data: &data
            }
            .to_text(),
            r#"{"type":"event","seq":7,"data":{"k":[1,2]}}"#
        );
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_any_text(s in ".{0,512}") {
            let _ = decode_text(&s);
        }

        #[test]
        fn decoder_never_panics_on_json_like_text(
            kind in prop_oneof![Just("message".to_owned()), Just("auth".to_owned()), Just("event".to_owned()), "[a-z]{0,8}"],
            id in ".{0,140}",
            text in ".{0,64}",
            extra in proptest::option::of("[a-z]{1,6}"),
        ) {
            let mut v = serde_json::json!({"type": kind, "id": id, "text": text});
            if let Some(k) = extra { v[k] = serde_json::json!(1); }
            let s = v.to_string();
            match decode_text(&s) {
                Ok(ClientFrame::Message { id: got, text: t }) => {
                    prop_assert!(valid_client_id(&got));
                    prop_assert_eq!(got, id);
                    prop_assert_eq!(t, text);
                }
                Ok(ClientFrame::Auth { .. }) => prop_assert!(false, "auth without token decoded"),
                Err(e) => prop_assert!([1003u16, 1007, 1008, 1009].contains(&e.close_code())),
            }
        }

        #[test]
        fn decoder_accepts_every_valid_message(
            id in "[A-Za-z0-9._:-]{1,128}",
            text in "\\PC{0,256}",
        ) {
            let s = serde_json::json!({"type": "message", "id": id, "text": text}).to_string();
            prop_assert_eq!(decode_text(&s), Ok(ClientFrame::Message { id, text }));
        }

        #[test]
        fn decoder_never_panics_on_bytes(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_binary(&b);
            if let Ok(s) = std::str::from_utf8(&b) {
                let _ = decode_text(s);
            }
        }
    }
}
