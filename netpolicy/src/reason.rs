//! The one reason enum. Its snake_case name is, byte for byte, the
//! `X-Egress-Error` header value, the audit log's `reason` field and the
//! `reason` label of `egress_requests_total`. Names are stable: add, never
//! rename.

/// Why a request was allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    // ----- allow -----
    /// GET/HEAD to a public destination.
    ReadPublic,
    /// A write from the worker to a host of one of the org's integrations.
    IntegrationWrite,
    /// A CONNECT tunnel to a package repository on an allowed port.
    PackageRepo,

    // ----- deny: the target itself -----
    /// The request target could not be parsed as an absolute http(s) URL or a
    /// CONNECT `host:port`.
    InvalidTarget,
    /// A scheme other than http or https.
    UnsupportedScheme,
    /// The URL carries `user:password@`; credentials go through the broker.
    UserinfoInUrl,
    /// The host is not a valid DNS name after UTS #46 processing.
    InvalidHost,
    /// A special-use name (`localhost`, `.local`, `.internal`, ...).
    SpecialUseName,
    /// An internationalized name that looks like another (mixed scripts,
    /// whole-script confusable, invisible characters).
    IdnSpoof,
    /// An address (literal or resolved) that is not globally reachable.
    BlockedAddress,
    /// The name did not resolve to any address.
    Unresolvable,
    /// The host is, or resolves to, an address of one of the proxy host's
    /// own interfaces (whatever its class).
    ProxyHostAddress,

    // ----- deny: policy -----
    /// A method that no source may use (OPTIONS, TRACE, unknown, ...).
    MethodNotAllowed,
    /// A write (POST/PUT/PATCH/DELETE) from an exec container.
    WriteFromContainer,
    /// A write to a host that is not one of the org's integrations.
    WriteNotIntegration,
    /// A write over plain http.
    WriteRequiresHttps,
    /// CONNECT to a host that is not a package repository.
    ConnectNotPackageRepo,
    /// CONNECT to a package repository on a port it is not allowed.
    ConnectPortNotAllowed,
    /// The org named in the request is not in the policy.
    UnknownOrg,
    /// The client's source address belongs to no org.
    UnknownClient,
    /// A read (GET/HEAD) to a port outside the policy's `read_ports`.
    PortNotAllowed,

    // ----- deny: protocol (proxy) -----
    /// A malformed request (framing, header bytes, size).
    MalformedRequest,
    /// The Host header does not name the request target.
    HostMismatch,
    /// A protocol upgrade (WebSocket, h2c, ...).
    UpgradeDenied,
    /// An origin-form request sent to the proxy port.
    NotAProxyRequest,
    /// A read (GET/HEAD) that carries a body (`Content-Length` > 0 or
    /// `Transfer-Encoding`).
    BodyOnRead,
    /// An absolute-form `https://` URL sent to the proxy in the clear; https
    /// goes through CONNECT.
    HttpsRequiresConnect,
    /// The TLS ClientHello in a tunnel has no SNI, or one that is not the
    /// CONNECT host.
    SniMismatch,
    /// The TLS ClientHello in a tunnel carries Encrypted Client Hello, whose
    /// inner name cannot be checked.
    EchNotAllowed,
    /// The first bytes in a tunnel are not a well-formed TLS ClientHello.
    TunnelNotTls,
    /// The client did not finish its request head (or its ClientHello) in
    /// time.
    HeadTimeout,
    /// The client closed the connection in the middle of a request head.
    HeadIncomplete,

    // ----- deny: upstream -----
    /// Every validated address refused or failed the connection.
    UpstreamConnectFailed,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The proxy is at its connection limit.
    Overloaded,
    /// A redirect was not followed (worker writes).
    RedirectNotFollowed,
    /// An internal error in a check: fail closed.
    InternalError,
    /// The audit log cannot be written: fail closed until it can.
    AuditUnavailable,
    /// This client address has its most connections open.
    ClientLimit,
    /// The client's org has its most connections open.
    OrgLimit,
    /// The client's org has its most tunnels open.
    TunnelLimit,
    /// The request did not finish within the whole-request deadline.
    RequestDeadline,
    /// The client did not read (or send) within the client deadline.
    ClientTimeout,

    // ----- deny: worker (API and credential broker) -----
    /// A worker API call without the right service token.
    Unauthorized,
    /// The run does not exist, ended or expired.
    UnknownRun,
    /// An integration that the org does not have in the policy.
    UnknownIntegration,
    /// A credential handle that is unknown, expired, revoked or bound to
    /// another run or org (one answer for all: no oracle).
    InvalidHandle,
    /// A credential used on a host that is not one of its integration's
    /// hosts, or over plain http.
    CredentialHostMismatch,
    /// The stored credential cannot be used (it does not decrypt, or it
    /// cannot travel in a header).
    InvalidCredential,
    /// A request or response body over the worker's size limit.
    RequestTooLarge,
    /// The credential's OAuth refresh was refused for good (`invalid_grant`
    /// or another OAuth error): an operator must authorize it again.
    NeedsReauth,

    // ----- deny: the production switch (docs/production.md) -----
    /// A component this request needs (the credential store, the egress
    /// proxy, the worker) stopped answering after start: refused, never
    /// degraded.
    DependencyUnavailable,
}

impl Reason {
    /// Every reason, in declaration order (for docs, metrics pre-registration and tests).
    pub const ALL: &'static [Reason] = &[
        Reason::ReadPublic,
        Reason::IntegrationWrite,
        Reason::PackageRepo,
        Reason::InvalidTarget,
        Reason::UnsupportedScheme,
        Reason::UserinfoInUrl,
        Reason::InvalidHost,
        Reason::SpecialUseName,
        Reason::IdnSpoof,
        Reason::BlockedAddress,
        Reason::Unresolvable,
        Reason::ProxyHostAddress,
        Reason::MethodNotAllowed,
        Reason::WriteFromContainer,
        Reason::WriteNotIntegration,
        Reason::WriteRequiresHttps,
        Reason::ConnectNotPackageRepo,
        Reason::ConnectPortNotAllowed,
        Reason::UnknownOrg,
        Reason::UnknownClient,
        Reason::PortNotAllowed,
        Reason::MalformedRequest,
        Reason::HostMismatch,
        Reason::UpgradeDenied,
        Reason::NotAProxyRequest,
        Reason::BodyOnRead,
        Reason::HttpsRequiresConnect,
        Reason::SniMismatch,
        Reason::EchNotAllowed,
        Reason::TunnelNotTls,
        Reason::HeadTimeout,
        Reason::HeadIncomplete,
        Reason::UpstreamConnectFailed,
        Reason::UpstreamTimeout,
        Reason::Overloaded,
        Reason::RedirectNotFollowed,
        Reason::InternalError,
        Reason::AuditUnavailable,
        Reason::ClientLimit,
        Reason::OrgLimit,
        Reason::TunnelLimit,
        Reason::RequestDeadline,
        Reason::ClientTimeout,
        Reason::Unauthorized,
        Reason::UnknownRun,
        Reason::UnknownIntegration,
        Reason::InvalidHandle,
        Reason::CredentialHostMismatch,
        Reason::InvalidCredential,
        Reason::RequestTooLarge,
        Reason::NeedsReauth,
        Reason::DependencyUnavailable,
    ];

    /// The stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::ReadPublic => "read_public",
            Reason::IntegrationWrite => "integration_write",
            Reason::PackageRepo => "package_repo",
            Reason::InvalidTarget => "invalid_target",
            Reason::UnsupportedScheme => "unsupported_scheme",
            Reason::UserinfoInUrl => "userinfo_in_url",
            Reason::InvalidHost => "invalid_host",
            Reason::SpecialUseName => "special_use_name",
            Reason::IdnSpoof => "idn_spoof",
            Reason::BlockedAddress => "blocked_address",
            Reason::Unresolvable => "unresolvable",
            Reason::ProxyHostAddress => "proxy_host_address",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::WriteFromContainer => "write_from_container",
            Reason::WriteNotIntegration => "write_not_integration",
            Reason::WriteRequiresHttps => "write_requires_https",
            Reason::ConnectNotPackageRepo => "connect_not_package_repo",
            Reason::ConnectPortNotAllowed => "connect_port_not_allowed",
            Reason::UnknownOrg => "unknown_org",
            Reason::UnknownClient => "unknown_client",
            Reason::PortNotAllowed => "port_not_allowed",
            Reason::MalformedRequest => "malformed_request",
            Reason::HostMismatch => "host_mismatch",
            Reason::UpgradeDenied => "upgrade_denied",
            Reason::NotAProxyRequest => "not_a_proxy_request",
            Reason::BodyOnRead => "body_on_read",
            Reason::HttpsRequiresConnect => "https_requires_connect",
            Reason::SniMismatch => "sni_mismatch",
            Reason::EchNotAllowed => "ech_not_allowed",
            Reason::TunnelNotTls => "tunnel_not_tls",
            Reason::HeadTimeout => "head_timeout",
            Reason::HeadIncomplete => "head_incomplete",
            Reason::UpstreamConnectFailed => "upstream_connect_failed",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::Overloaded => "overloaded",
            Reason::RedirectNotFollowed => "redirect_not_followed",
            Reason::InternalError => "internal_error",
            Reason::AuditUnavailable => "audit_unavailable",
            Reason::ClientLimit => "client_limit",
            Reason::OrgLimit => "org_limit",
            Reason::TunnelLimit => "tunnel_limit",
            Reason::RequestDeadline => "request_deadline",
            Reason::ClientTimeout => "client_timeout",
            Reason::Unauthorized => "unauthorized",
            Reason::UnknownRun => "unknown_run",
            Reason::UnknownIntegration => "unknown_integration",
            Reason::InvalidHandle => "invalid_handle",
            Reason::CredentialHostMismatch => "credential_host_mismatch",
            Reason::InvalidCredential => "invalid_credential",
            Reason::RequestTooLarge => "request_too_large",
            Reason::NeedsReauth => "needs_reauth",
            Reason::DependencyUnavailable => "dependency_unavailable",
        }
    }

    /// Whether this reason is an allow.
    pub const fn is_allow(self) -> bool {
        matches!(
            self,
            Reason::ReadPublic | Reason::IntegrationWrite | Reason::PackageRepo
        )
    }

    /// One sentence an agent can act on: what was denied, why, and what is
    /// allowed instead. Used as the body of a denial response.
    pub const fn explain(self) -> &'static str {
        match self {
            Reason::ReadPublic => "GET/HEAD to a public host is allowed",
            Reason::IntegrationWrite => "writes to an approved integration host are allowed",
            Reason::PackageRepo => "tunnels to package repositories are allowed",
            Reason::InvalidTarget => {
                "the request target is not an absolute http(s) URL or a CONNECT host:port; send `GET http://host/path` through the proxy"
            }
            Reason::UnsupportedScheme => "only http and https URLs are allowed",
            Reason::UserinfoInUrl => {
                "credentials in URLs are refused; use a credential handle through the worker instead"
            }
            Reason::InvalidHost => "the host name is not a valid DNS name",
            Reason::SpecialUseName => {
                "special-use names (localhost, .local, .internal, ...) never leave; use a public host"
            }
            Reason::IdnSpoof => {
                "the internationalized host name mixes scripts or imitates another name; use the real ASCII name"
            }
            Reason::BlockedAddress => {
                "the host is or resolves to a private, loopback, link-local or reserved address; only public addresses are reachable"
            }
            Reason::Unresolvable => "the host name did not resolve; check the spelling",
            Reason::ProxyHostAddress => {
                "the host is or resolves to an address of the proxy's own machine, which is never reachable through it"
            }
            Reason::MethodNotAllowed => {
                "only GET and HEAD (and writes to approved integrations from the worker) are allowed"
            }
            Reason::WriteFromContainer => {
                "exec containers may only read (GET/HEAD); make writes through an approved integration tool"
            }
            Reason::WriteNotIntegration => {
                "writes go only to hosts of the org's approved integrations; ask an operator to add the integration"
            }
            Reason::WriteRequiresHttps => "writes are allowed over https only",
            Reason::ConnectNotPackageRepo => {
                "tunnels (CONNECT/https) are allowed only to package repositories; use plain http:// for reads"
            }
            Reason::ConnectPortNotAllowed => {
                "this package repository is reachable only on its allowed ports (443 by default)"
            }
            Reason::UnknownOrg => "the organization is not in the egress policy",
            Reason::UnknownClient => {
                "this client address belongs to no organization in the egress policy"
            }
            Reason::PortNotAllowed => {
                "reads go only to the policy's read ports (80, 443 and 8080 by default); use the host's standard port"
            }
            Reason::MalformedRequest => "the request is malformed",
            Reason::HostMismatch => "the Host header must name the same host as the request target",
            Reason::UpgradeDenied => "protocol upgrades (WebSocket, h2c) are not allowed",
            Reason::NotAProxyRequest => {
                "this is a forward proxy: send absolute-form requests (GET http://host/path) or CONNECT"
            }
            Reason::BodyOnRead => {
                "a GET or HEAD must not carry a body (Content-Length above 0 or Transfer-Encoding); send the request without one"
            }
            Reason::HttpsRequiresConnect => {
                "https URLs are not sent in the clear; use CONNECT (set HTTPS_PROXY), which reaches package repositories only"
            }
            Reason::SniMismatch => {
                "the TLS server name (SNI) must be present and equal the CONNECT host"
            }
            Reason::EchNotAllowed => {
                "Encrypted Client Hello hides the server name, which must equal the CONNECT host; connect without ECH"
            }
            Reason::TunnelNotTls => "a tunnel must start with a TLS ClientHello",
            Reason::HeadTimeout => "the request head (or TLS ClientHello) did not arrive in time",
            Reason::HeadIncomplete => "the connection closed in the middle of a request head",
            Reason::UpstreamConnectFailed => {
                "no validated address of the host accepted a connection"
            }
            Reason::UpstreamTimeout => "the upstream did not answer in time",
            Reason::Overloaded => "the proxy is at its connection limit; retry later",
            Reason::RedirectNotFollowed => "redirects are not followed for writes",
            Reason::InternalError => "an internal check failed, so the request was denied",
            Reason::AuditUnavailable => {
                "the proxy cannot write its audit log, so it serves nothing; retry later"
            }
            Reason::ClientLimit => {
                "this client address has its most connections open; close some and retry"
            }
            Reason::OrgLimit => {
                "this organization has its most connections open; close some and retry"
            }
            Reason::TunnelLimit => {
                "this organization has its most tunnels open; close some and retry"
            }
            Reason::RequestDeadline => "the request did not finish within the proxy's deadline",
            Reason::ClientTimeout => {
                "the client did not read the response (or send its request) in time"
            }
            Reason::Unauthorized => "the worker API needs `Authorization: Bearer <service token>`",
            Reason::UnknownRun => {
                "the run does not exist, has ended or has expired; start a new run"
            }
            Reason::UnknownIntegration => {
                "the org has no such integration in the egress policy; ask an operator to add it"
            }
            Reason::InvalidHandle => {
                "the credential handle is not valid for this run; use a handle returned when this run started"
            }
            Reason::CredentialHostMismatch => {
                "a credential is sent only to its integration's hosts, over https; use the handle of the integration that owns this host"
            }
            Reason::InvalidCredential => {
                "the stored credential cannot be used; ask an operator to add it again"
            }
            Reason::RequestTooLarge => "the body is over the worker's 10 MiB limit",
            Reason::NeedsReauth => {
                "the provider refused to refresh this credential; ask an operator to authorize the integration again (egressctl credential add)"
            }
            Reason::DependencyUnavailable => {
                "a component this request needs (credential store, egress proxy or worker) is unavailable; the request is refused until /readyz is green again"
            }
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case_and_all_is_complete() {
        let mut seen = std::collections::BTreeSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            assert!(seen.insert(s), "duplicate {s}");
        }
        assert_eq!(seen.len(), Reason::ALL.len());
    }
}
