//! One fabricated sample per credential family the scrubber promises to
//! catch (see docs/scrubbing.md), in a sentence, a JSON field, a header and
//! a URL query. The values are made up: random characters in each vendor's
//! published format.
#![allow(clippy::indexing_slicing, reason = "test data helper")]

use scrub::{Scrubber, handle, scrub_str};

/// Deterministic filler from an alphabet (xorshift).
fn fill(alphabet: &str, n: usize, seed: u64) -> String {
    let a = alphabet.as_bytes();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            a[(x % a.len() as u64) as usize] as char
        })
        .collect()
}

const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &str = "0123456789abcdef";
const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";
const B64: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn samples() -> Vec<(&'static str, String)> {
    vec![
        ("openai project key", format!("sk-proj-{}", fill(ALNUM, 48, 1))),
        (
            "openai legacy key",
            format!("sk-{}T3BlbkFJ{}", fill(ALNUM, 20, 2), fill(ALNUM, 20, 3)),
        ),
        (
            "anthropic key",
            format!("sk-ant-api03-{}AA", fill(ALNUM, 93, 4)),
        ),
        ("github classic", format!("ghp_{}", fill(ALNUM, 36, 5))),
        (
            "github fine grained",
            format!("github_pat_{}_{}", fill(ALNUM, 22, 6), fill(ALNUM, 59, 7)),
        ),
        ("github app", format!("ghs_{}", fill(ALNUM, 36, 8))),
        ("github oauth", format!("gho_{}", fill(ALNUM, 36, 9))),
        ("gitlab pat", format!("glpat-{}", fill(ALNUM, 20, 10))),
        (
            "slack bot",
            format!("xoxb-{}-{}-{}", fill("0123456789", 12, 11), fill("0123456789", 13, 12), fill(ALNUM, 24, 13)),
        ),
        (
            "slack user",
            format!("xoxp-{}-{}-{}-{}", fill("0123456789", 11, 14), fill("0123456789", 11, 15), fill("0123456789", 12, 16), fill(HEX, 32, 17)),
        ),
        (
            "slack app",
            format!("xapp-1-A{}-{}-{}", fill("ABCDEFGHIJ0123456789", 10, 18), fill("0123456789", 13, 19), fill(HEX, 64, 20)),
        ),
        (
            "slack webhook",
            format!("https://hooks.slack.com/services/T{}/B{}/{}", fill(ALNUM, 8, 21), fill(ALNUM, 10, 22), fill(ALNUM, 24, 23)),
        ),
        ("google api key", format!("AIza{}", fill(ALNUM, 35, 24))),
        ("google oauth", format!("ya29.{}", fill(ALNUM, 60, 25))),
        ("aws access key id", format!("AKIA{}", fill("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16, 26))),
        ("aws bedrock", format!("ABSK{}", fill(B64, 120, 27))),
        (
            "azure client secret",
            format!("{}8Q~{}", fill(ALNUM, 3, 28), fill(ALNUM, 34, 29)),
        ),
        ("stripe", format!("sk_live_{}", fill(ALNUM, 32, 30))),
        ("hugging face", format!("hf_{}", fill(LOWER, 34, 31))),
        ("npm", format!("npm_{}", fill(ALNUM, 36, 32))),
        ("pypi", format!("pypi-AgEIcHlwaS5vcmc{}", fill(ALNUM, 70, 33))),
        (
            "sendgrid",
            format!("SG.{}.{}", fill(ALNUM, 22, 34), fill(ALNUM, 43, 35)),
        ),
        ("twilio", format!("SK{}", fill(HEX, 32, 36))),
        ("shopify", format!("shpat_{}", fill(HEX, 32, 37))),
        ("digitalocean", format!("dop_v1_{}", fill(HEX, 64, 38))),
        ("vault", format!("hvs.{}", fill(ALNUM, 95, 39))),
        ("groq", format!("gsk_{}", fill(ALNUM, 52, 40))),
        ("xai", format!("xai-{}", fill(ALNUM, 80, 41))),
        ("openrouter", format!("sk-or-v1-{}", fill(HEX, 64, 42))),
        ("databricks", format!("dapi{}", fill(HEX, 32, 43))),
        ("atlassian", format!("ATATT3xFfGF0{}", fill(ALNUM, 180, 44))),
        (
            "discord bot",
            format!("MT{}.{}.{}", fill(ALNUM, 22, 45), fill(ALNUM, 6, 46), fill(ALNUM, 27, 47)),
        ),
        (
            "telegram bot",
            format!("{}:AA{}", fill("0123456789", 10, 48), fill(ALNUM, 33, 49)),
        ),
        (
            "jwt",
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U".to_owned(),
        ),
        ("chokepoint handle", handle::generate(&[77u8; 32])),
    ]
}

#[test]
fn every_family_is_redacted_in_every_context() {
    let mut failures = Vec::new();
    for (name, token) in samples() {
        let contexts = [
            format!("the tool said {token} and stopped"),
            format!("{{\"data\": {{\"value\": \"{token}\"}}}}"),
            format!("error: upstream returned ({token}), retrying"),
            format!("GET https://example.com/cb?access_token={token}&state=1"),
        ];
        for text in contexts {
            let out = scrub_str(&text);
            if out.contains(&token) || !out.contains("[REDACTED:") {
                failures.push(format!("{name}: {text} -> {out}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn headers_keys_and_url_passwords() {
    let cases = [
        (
            "Authorization: Bearer abc.DEF-123_456~xyz789",
            "abc.DEF-123_456~xyz789",
        ),
        (
            "authorization: basic dXNlcjpwYXNzd29yZDEyMw==",
            "dXNlcjpwYXNzd29yZDEyMw==",
        ),
        (
            "Proxy-Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l",
            "YWxhZGRpbjpvcGVuc2VzYW1l",
        ),
        (
            "-H 'Authorization: token 0123456789abcdefXYZ'",
            "0123456789abcdefXYZ",
        ),
        (
            "dsn=https://user:Sup3rS3cret@db.example.com/app",
            "Sup3rS3cret",
        ),
        ("redis://:p4ssw0rd-long@cache:6379/0", "p4ssw0rd-long"),
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKE",
        ),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAvN1aW9p0PAsl2l6VfP2wQ3n3x5Yb8c7ZtQ9f1sHcW0aZp3Lq\nK8d2Jx0Hn5wz4Tq1Yk7fQ2lM9sD3rV6bN8eP1cX4vA7uZ0yT5iW2oK9jL3hG6fD8s\n-----END RSA PRIVATE KEY-----",
            "MIIEowIBAAKCAQEAvN1aW9p0PAsl2l6VfP2wQ3n3x5Yb8c7ZtQ9f1sHcW0aZp3Lq",
        ),
    ];
    for (text, secret) in cases {
        let out = scrub_str(text);
        assert!(!out.contains(secret), "{text} -> {out}");
    }
    // Not credentials: left alone.
    for text in [
        "Basic usage: run the tool",
        "see https://example.com/docs?page=2&lang=en",
        "http://user@example.com/path",
        "Bearer tokens are described in RFC 6750",
    ] {
        assert_eq!(scrub_str(text), text);
    }
}

#[test]
fn live_value_in_basic_header_and_url() {
    let token = "s3cr3t-live-token-value";
    let s = Scrubber::with_live_secrets([token]);
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
    for text in [
        format!("Authorization: Basic {basic}"),
        format!("url=https://h/?t={}", token.replace('-', "%2D")),
        format!("{{\"echo\":\"{token}\"}}"),
    ] {
        let out = s.scrub(&text);
        assert!(
            !out.contains(token) && !out.contains(&basic),
            "{text} -> {out}"
        );
    }
}
