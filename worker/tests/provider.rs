//! `HttpProvider` against the strict fake token endpoint served over real
//! HTTP and HTTPS on 127.0.0.2 (allowed by the test policy's
//! `unsafe_allow_ranges`), through the worker's pinned client: the request
//! it sends, how it classifies answers, and the address policy it obeys.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr
)] // test code: a panic is a failed test

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use e2e::DnsServer;
use e2e::tls_origin::TestCa;
use e2e::token_endpoint::{CallResult, ServeTls, StrictEndpoint};
use netpolicy::Policy;
use secrecy::ExposeSecret;
use worker::client::PinnedClient;
use worker::provider::HttpProvider;
use worker::refresh::{ClientAuth, Provider, ProviderError, RefreshMaterial};

const POLICY: &str = "version: v1\nunsafe_allow_ranges: [127.0.0.2/32]\norgs:\n  acme:\n    integrations:\n      calendar:\n        hosts: [api.calendar-e2e.com]\n";
const TOKEN_HOST: &str = "oauth.provider-e2e.com";

fn two() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))
}

fn policy() -> Arc<Policy> {
    Arc::new(Policy::from_yaml("test.yaml", POLICY).unwrap())
}

fn material(refresh_token: &str, secret: &str) -> RefreshMaterial {
    RefreshMaterial {
        refresh_token: refresh_token.to_owned(),
        client_id: "client id".into(),
        client_secret: secret.to_owned(),
        client_auth: ClientAuth::ClientSecretBasic,
    }
}

fn provider(dns: &DnsServer, extra_ca: &[&std::path::Path]) -> HttpProvider {
    let client = Arc::new(PinnedClient::new(&[dns.addr], extra_ca).unwrap());
    HttpProvider::new(client, policy())
}

/// `client_secret_post`: the client id and secret go in the form body and
/// no `Authorization` header is sent; an endpoint that takes only one of
/// the two methods refuses the other (`invalid_client`, terminal).
#[tokio::test]
async fn client_secret_post_sends_the_client_in_the_form() {
    let secret = "s3cr:t/+&=%";
    let post_only =
        Arc::new(StrictEndpoint::new(Duration::ZERO).with_client_post("client id", secret));
    let (post_url, _post_server) = post_only.serve(SocketAddr::new(two(), 0), None);
    let basic_only = Arc::new(StrictEndpoint::new(Duration::ZERO).with_client("client id", secret));
    let (basic_url, _basic_server) = basic_only.serve(SocketAddr::new(two(), 0), None);
    let dns = DnsServer::start();
    let p = provider(&dns, &[]);
    let as_post = |rt: &str| {
        let mut m = material(rt, secret);
        m.client_auth = ClientAuth::ClientSecretPost;
        m
    };

    let first = post_only.grant();
    let a = p.refresh(&post_url, &as_post(&first)).await.unwrap();
    let calls = post_only.calls();
    let CallResult::Rotated(access, _) = &calls[0].result else {
        panic!("{calls:?}");
    };
    assert_eq!(a.access_token.expose_secret(), access);

    // Basic against the post-only endpoint, post against the basic-only
    // one: refused before the refresh token is looked at.
    let fresh = post_only.grant();
    let e = p
        .refresh(&post_url, &material(&fresh, secret))
        .await
        .err()
        .unwrap();
    assert_eq!(e, ProviderError::OAuth("invalid_client".into()));
    let fresh = basic_only.grant();
    let e = p.refresh(&basic_url, &as_post(&fresh)).await.err().unwrap();
    assert_eq!(e, ProviderError::OAuth("invalid_client".into()));
    assert_eq!(post_only.http_counts().bad_client, 1);
    assert_eq!(basic_only.http_counts().bad_client, 1);
    assert_eq!(basic_only.calls().len(), 0);

    // Sealed material from before `client_auth` existed opens as basic.
    let old: RefreshMaterial =
        serde_json::from_str(r#"{"refresh_token":"r","client_id":"i","client_secret":"s"}"#)
            .unwrap();
    assert_eq!(old.client_auth, ClientAuth::ClientSecretBasic);
}

/// A replay inside the reuse window repeats an access token issued
/// earlier: its `expires_in` counts from the replay (RFC 6749 §5.1), so the
/// worker does not keep a token past the time the integration refuses it.
#[tokio::test]
async fn a_replayed_answer_carries_the_lifetime_left() {
    let ep = Arc::new(
        StrictEndpoint::new(Duration::from_secs(10))
            .with_access_lifetime(Duration::from_secs(4))
            .with_client("client id", "s"),
    );
    let (url, _server) = ep.serve(SocketAddr::new(two(), 0), None);
    let dns = DnsServer::start();
    let p = provider(&dns, &[]);
    let first = ep.grant();
    let a = p.refresh(&url, &material(&first, "s")).await.unwrap();
    assert_eq!(a.expires_in, Some(4));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let again = p.refresh(&url, &material(&first, "s")).await.unwrap();
    assert!(matches!(ep.calls()[1].result, CallResult::Replayed(..)));
    assert_eq!(
        again.access_token.expose_secret(),
        a.access_token.expose_secret()
    );
    assert_eq!(again.expires_in, Some(3), "4 s less 1.5 s, rounded up");
}

#[tokio::test]
async fn http_refresh_rotates_and_classifies() {
    let ep = Arc::new(
        StrictEndpoint::new(Duration::ZERO)
            .with_access_lifetime(Duration::from_secs(120))
            .with_client("client id", "s3cr:t/+"),
    );
    let (url, _server) = ep.serve(SocketAddr::new(two(), 0), None);
    let dns = DnsServer::start();
    let p = provider(&dns, &[]);
    let first = ep.grant();

    // A rotation: the new pair and the lifetime come back.
    let a = p
        .refresh(&url, &material(&first, "s3cr:t/+"))
        .await
        .unwrap();
    let calls = ep.calls();
    assert_eq!(calls.len(), 1);
    let CallResult::Rotated(access, next) = &calls[0].result else {
        panic!("{calls:?}");
    };
    assert_eq!(calls[0].presented, first);
    assert_eq!(a.access_token.expose_secret(), access);
    assert_eq!(a.refresh_token.as_ref().unwrap().expose_secret(), next);
    assert_eq!(a.expires_in, Some(120));
    assert!(ep.access_valid(access));

    // The consumed token again: invalid_grant, terminal, and the family is
    // revoked (the strict provider's rule).
    let e = p
        .refresh(&url, &material(&first, "s3cr:t/+"))
        .await
        .err()
        .unwrap();
    assert_eq!(e, ProviderError::OAuth("invalid_grant".into()));
    assert!(!ep.access_valid(access));

    // Wrong client secret: invalid_client (401 with an OAuth error), and
    // the refresh token was not looked at.
    let fresh = ep.grant();
    let e = p
        .refresh(&url, &material(&fresh, "wrong"))
        .await
        .err()
        .unwrap();
    assert_eq!(e, ProviderError::OAuth("invalid_client".into()));
    assert_eq!(ep.http_counts().bad_client, 1);

    // 503 and 429 are transient; nothing consumed.
    for status in [503, 429, 500] {
        ep.fail_next(1, status);
        let e = p
            .refresh(&url, &material(&fresh, "s3cr:t/+"))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, ProviderError::Transient(_)), "{status}: {e:?}");
    }
    assert_eq!(ep.http_counts().injected_failures, 3);
    // And then it works with the same, unconsumed token.
    p.refresh(&url, &material(&fresh, "s3cr:t/+"))
        .await
        .unwrap();
    assert_eq!(ep.revoked_families(), 1);
}

#[tokio::test]
async fn https_token_endpoint_through_pinned_dns() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path(), &[TOKEN_HOST], &[]);
    let ep = Arc::new(StrictEndpoint::new(Duration::ZERO).with_client("client id", "sec"));
    let (url, _server) = ep.serve(
        SocketAddr::new(two(), 0),
        Some(ServeTls {
            ca: &ca,
            host: TOKEN_HOST,
        }),
    );
    assert!(url.starts_with("https://oauth.provider-e2e.com:"), "{url}");
    let dns = DnsServer::start();
    dns.set_static(TOKEN_HOST, &[two()]);
    let p = provider(&dns, &[ca.ca_pem.as_path()]);
    let a = p
        .refresh(&url, &material(&ep.grant(), "sec"))
        .await
        .unwrap();
    assert!(ep.access_valid(a.access_token.expose_secret()));
    assert_eq!(dns.queries(TOKEN_HOST), 1);

    // The name now resolves to a private address: refused before any
    // connection, transient (the credential is not declared dead).
    dns.set_static(TOKEN_HOST, &[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    let before = ep.http_counts().requests;
    let e = p
        .refresh(&url, &material(&ep.grant(), "sec"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        e,
        ProviderError::Transient("token endpoint: blocked_address".into())
    );
    assert_eq!(ep.http_counts().requests, before);

    // Without the test CA the certificate is not trusted: transient.
    dns.set_static(TOKEN_HOST, &[two()]);
    let untrusting = provider(&dns, &[]);
    let e = untrusting
        .refresh(&url, &material(&ep.grant(), "sec"))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ProviderError::Transient(_)), "{e:?}");
}

#[tokio::test]
async fn address_policy_and_url_rules() {
    let dns = DnsServer::start();
    let p = provider(&dns, &[]);
    // 127.0.0.1 is not in unsafe_allow_ranges: no connection is made.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let e = p
        .refresh(
            &format!("http://127.0.0.1:{port}/token"),
            &material("rt", "s"),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(
        e,
        ProviderError::Transient("token endpoint: blocked_address".into())
    );
    assert!(listener.accept().is_err(), "a connection was made");
    // http to a name is refused outright (https required).
    let e = p
        .refresh("http://oauth.example.com/token", &material("rt", "s"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        e,
        ProviderError::Transient("token url must be https".into())
    );
}

/// A raw server on 127.0.0.2 answering every connection with `answer`
/// (after `delay`); counts connections.
fn raw_server(answer: Vec<u8>, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind(SocketAddr::new(two(), 0)).unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            h.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                s.set_read_timeout(Some(Duration::from_millis(500))).ok();
                let _ = s.read(&mut buf);
                std::thread::sleep(delay);
                let _ = s.write_all(&answer);
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn oversized_slow_and_redirecting_answers_are_transient() {
    let dns = DnsServer::start();
    // An answer over 64 KiB.
    let big = format!(
        "{{\"access_token\":\"{}\"}}",
        "a".repeat(worker::provider::MAX_ANSWER)
    );
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    resp.extend_from_slice(big.as_bytes());
    let (addr, _) = raw_server(resp, Duration::ZERO);
    let e = provider(&dns, &[])
        .refresh(&format!("http://{addr}/token"), &material("rt", "s"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        e,
        ProviderError::Transient("token endpoint: answer over the size limit".into())
    );

    // A redirect is not followed.
    let (addr, hits) = raw_server(
        b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:1/x\r\nContent-Length: 0\r\n\r\n"
            .to_vec(),
        Duration::ZERO,
    );
    let e = provider(&dns, &[])
        .refresh(&format!("http://{addr}/token"), &material("rt", "s"))
        .await
        .err()
        .unwrap();
    assert_eq!(e, ProviderError::Transient("status 302".into()));
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Slower than the call timeout.
    let (addr, _) = raw_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
        Duration::from_secs(3),
    );
    let p = provider(&dns, &[]).with_timeout(Duration::from_millis(300));
    let e = p
        .refresh(&format!("http://{addr}/token"), &material("rt", "s"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        e,
        ProviderError::Transient("token endpoint: timeout".into())
    );
}
