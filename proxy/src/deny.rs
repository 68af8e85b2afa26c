//! The ONE place that turns a [`Reason`] into a denial response.
//!
//! Owns: the status code per reason, the `X-Egress-Error` header and the
//! one-line body (what was denied: method and `host:port`, never the full
//! URL or query, which may hold secrets; then why and what to do instead),
//! passed through the token scrubber. Must never: echo a URL, a query, a
//! header value or any other client-supplied text except the folded method
//! and the normalized `host:port`.

use netpolicy::{Method, Reason};

/// A rendered denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Denial {
    /// The HTTP status.
    pub(crate) status: u16,
    /// The reason (header value, audit field, metric label).
    pub(crate) reason: Reason,
    /// The one-line text body, already scrubbed, ending in `\n`.
    pub(crate) body: String,
}

/// The status code for a denial reason.
pub(crate) const fn status_for(reason: Reason) -> u16 {
    match reason {
        Reason::MalformedRequest
        | Reason::NotAProxyRequest
        | Reason::InvalidTarget
        | Reason::HttpsRequiresConnect
        | Reason::HeadIncomplete => 400,
        Reason::HeadTimeout | Reason::ClientTimeout => 408,
        Reason::ClientLimit | Reason::OrgLimit | Reason::TunnelLimit => 429,
        Reason::Unresolvable | Reason::UpstreamConnectFailed => 502,
        Reason::UpstreamTimeout | Reason::RequestDeadline => 504,
        Reason::Overloaded | Reason::AuditUnavailable => 503,
        Reason::InternalError => 500,
        _ => 403,
    }
}

/// Render the denial for `method` to `target` (a normalized `host:port`, or
/// `None` when the target could not be parsed).
pub(crate) fn deny(reason: Reason, method: Method, target: Option<&str>) -> Denial {
    let what = match target {
        Some(t) => format!("{} {}", method.as_str(), t),
        None => format!("{} request", method.as_str()),
    };
    let line = format!(
        "egress-proxy denied {what}: {}: {}\n",
        reason.as_str(),
        reason.explain()
    );
    Denial {
        status: status_for(reason),
        reason,
        body: crate::audit::scrub(&line).into_owned(),
    }
}

impl Denial {
    /// The full HTTP/1.1 response (the connection is closed after it).
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        format!(
            "HTTP/1.1 {} {}\r\nX-Egress-Error: {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.status,
            phrase(self.status),
            self.reason.as_str(),
            self.body.len(),
            self.body
        )
        .into_bytes()
    }

    /// The response header, for denials written through a Pingora session.
    pub(crate) fn response_header(&self) -> pingora::Result<pingora::http::ResponseHeader> {
        let mut h = pingora::http::ResponseHeader::build(self.status, Some(4))?;
        h.insert_header("X-Egress-Error", self.reason.as_str())?;
        h.insert_header("Content-Type", "text/plain; charset=utf-8")?;
        h.insert_header("Content-Length", self.body.len().to_string())?;
        h.insert_header("Connection", "close")?;
        Ok(h)
    }
}

/// The reason phrase of the statuses we emit.
const fn phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(status_for(Reason::WriteFromContainer), 403);
        assert_eq!(status_for(Reason::MalformedRequest), 400);
        assert_eq!(status_for(Reason::NotAProxyRequest), 400);
        assert_eq!(status_for(Reason::InvalidTarget), 400);
        assert_eq!(status_for(Reason::Unresolvable), 502);
        assert_eq!(status_for(Reason::UpstreamConnectFailed), 502);
        assert_eq!(status_for(Reason::UpstreamTimeout), 504);
        assert_eq!(status_for(Reason::Overloaded), 503);
        assert_eq!(status_for(Reason::HostMismatch), 403);
        assert_eq!(status_for(Reason::BodyOnRead), 403);
        assert_eq!(status_for(Reason::HttpsRequiresConnect), 400);
        assert_eq!(status_for(Reason::PortNotAllowed), 403);
        assert_eq!(status_for(Reason::HeadTimeout), 408);
        assert_eq!(status_for(Reason::OrgLimit), 429);
        assert_eq!(status_for(Reason::AuditUnavailable), 503);
    }

    #[test]
    fn rendering_names_method_and_authority_only() {
        let d = deny(
            Reason::WriteFromContainer,
            Method::Post,
            Some("example.com:80"),
        );
        let text = String::from_utf8(d.to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(text.contains("\r\nX-Egress-Error: write_from_container\r\n"));
        assert!(text.ends_with(&format!(
            "egress-proxy denied POST example.com:80: write_from_container: {}\n",
            Reason::WriteFromContainer.explain()
        )));
        assert_eq!(d.body.lines().count(), 1);
        let cl = format!("Content-Length: {}\r\n", d.body.len());
        assert!(text.contains(&cl));
    }

    #[test]
    fn unparsed_target() {
        let d = deny(Reason::MalformedRequest, Method::Other, None);
        assert!(
            d.body
                .starts_with("egress-proxy denied OTHER request: malformed_request")
        );
        assert_eq!(d.status, 400);
    }
}
