//! The context rule: a key that names a secret, an assignment, and a value
//! that looks like one.
//!
//! Most leaked credentials carry no prefix of their own: a provider's key is
//! 16–64 characters of hex, base62 or base64, or a UUID, and what says it is
//! a secret is the name it is assigned to (`PROVIDER_API_KEY=…`,
//! `"apiKey": "…"`, `<password>…</password>`, `-H 'X-Api-Key: …'`,
//! `--token …`). This module recognises that shape without a regex, from a
//! keyword hit of the shared Aho-Corasick prefilter:
//!
//! 1. the **key**: the identifier around the hit (`[A-Za-z0-9_.-]`), split
//!    into words (`_ - .` and camelCase); one word must name a secret
//!    ([`SECRET_WORDS`]) or a provider ([`PROVIDER_WORDS`], stricter value
//!    test), and the last word must not say the value is something else
//!    (`api_key_id`, `token_url`, `password_file`, `next_page_token`, …);
//! 2. the **assignment**: an optional closing quote or `]`, then `=`, `:`,
//!    `=>`, `:=`, `?=`, `||=`, `>` (an XML element), `,` (after a quoted key:
//!    `setenv("KEY", "…")`), `("` (a setter call), or whitespace after a
//!    command-line flag (`--token …`) or a `.netrc` `password`;
//! 3. the **value**: quoted (any printable run without the quote) or not
//!    (`[A-Za-z0-9+/=_.~!@#$%^*?:-]`), which must pass [`plausible_secret`]:
//!    a length floor, a character-class test (letters and digits), a
//!    Shannon-entropy floor scaled to its alphabet and length, and not be a
//!    placeholder ([`is_placeholder`]: `xxxxx`, `<your-key>`, `${VAR}`,
//!    `changeme`, sequences, repeated characters, repeated blocks, values
//!    cut short with `...`) or a URL, path, e-mail address, version or date.
//!
//! Only the value is redacted; the key stays. Work per hit is bounded: a key
//! is at most [`MAX_KEY`] bytes, the value [`MAX_VALUE`] bytes.
//!
//! Must never: index out of bounds (every access is `get`), look further than
//! the current line, or redact a value the tests above rejected.

use crate::Span;
use crate::rules::shannon_entropy;

/// The label of a context-rule redaction.
pub(crate) const LABEL: &str = "secret-assignment";
/// Longest key considered, in bytes.
const MAX_KEY: usize = 96;
/// Longest value considered, in bytes (longer runs are not one token).
const MAX_VALUE: usize = 512;
/// Whitespace skipped around the operator.
const MAX_GAP: usize = 8;

/// The prefilter keywords of the context rule: each secret word contains
/// one of them. Provider names are not keywords (they would grow the shared
/// automaton by a third for names that almost always also carry `key`,
/// `token` or `secret`); a name made of a provider alone (`"datadog": …`)
/// is therefore not scanned.
pub(crate) const KEYWORDS: &[&str] = &[
    "key", "token", "secret", "pass", "pwd", "auth", "cred", "bearer", "api", "private", "access",
    "session", "license", "webhook", "pat",
];

/// Words that name a secret when they are a word of the key.
const SECRET_WORDS: &[&str] = &[
    "key",
    "keys",
    "apikey",
    "apikeys",
    "token",
    "tokens",
    "secret",
    "secrets",
    "password",
    "passwords",
    "passwd",
    "pwd",
    "pass",
    "passphrase",
    "auth",
    "authtoken",
    "authkey",
    "credential",
    "credentials",
    "creds",
    "cred",
    "bearer",
    "api",
    "private",
    "privatekey",
    "access",
    "accesstoken",
    "accesskey",
    "secretkey",
    "session",
    "sessionid",
    "sessiontoken",
    "clientsecret",
    "apitoken",
    "apisecret",
    "pat",
    "license",
    "licensekey",
    "webhook",
    "signingkey",
    "encryptionkey",
    "masterkey",
];

/// Provider and product names: in a name reached through another keyword
/// but with no secret word of its own (`DATADOG_API=…`), they make it a
/// credential name when the value passes the stricter test.
pub(crate) const PROVIDER_WORDS: &[&str] = &[
    "abstract",
    "adafruit",
    "airtable",
    "algolia",
    "amplitude",
    "anthropic",
    "apify",
    "artifactory",
    "asana",
    "assemblyai",
    "atlassian",
    "auth0",
    "azure",
    "bitbucket",
    "braintree",
    "brevo",
    "browserbase",
    "buildkite",
    "bugsnag",
    "circleci",
    "clickup",
    "cloudflare",
    "cloudinary",
    "codecov",
    "cohere",
    "coinbase",
    "confluent",
    "contentful",
    "databricks",
    "datadog",
    "deepgram",
    "deepseek",
    "digitalocean",
    "discord",
    "docker",
    "dockerhub",
    "doppler",
    "dropbox",
    "dynatrace",
    "elevenlabs",
    "fastly",
    "figma",
    "firebase",
    "firecrawl",
    "fireworks",
    "freshdesk",
    "github",
    "gitlab",
    "grafana",
    "groq",
    "heroku",
    "honeycomb",
    "hubspot",
    "huggingface",
    "intercom",
    "jfrog",
    "jira",
    "launchdarkly",
    "linear",
    "linode",
    "loggly",
    "mailchimp",
    "mailgun",
    "mailjet",
    "mapbox",
    "mistral",
    "mixpanel",
    "mongodb",
    "netlify",
    "newrelic",
    "notion",
    "nuget",
    "okta",
    "openai",
    "openrouter",
    "opsgenie",
    "pagerduty",
    "paypal",
    "perplexity",
    "pinecone",
    "pipedrive",
    "plaid",
    "planetscale",
    "postmark",
    "postman",
    "pulumi",
    "pusher",
    "razorpay",
    "replicate",
    "rollbar",
    "rubygems",
    "salesforce",
    "segment",
    "sendgrid",
    "sentry",
    "serpapi",
    "shopify",
    "slack",
    "snyk",
    "sonarcloud",
    "sparkpost",
    "splunk",
    "square",
    "stripe",
    "supabase",
    "telegram",
    "terraform",
    "todoist",
    "trello",
    "twilio",
    "typeform",
    "vercel",
    "vonage",
    "vultr",
    "webflow",
    "zendesk",
    "zoho",
];

/// Key words that say the value is not the secret itself, when they are the
/// key's last word (`api_key_id`, `token_url`, `secret_name`).
const NOT_SECRET_LAST: &[&str] = &[
    "id",
    "ids",
    "name",
    "names",
    "url",
    "urls",
    "uri",
    "endpoint",
    "file",
    "files",
    "path",
    "dir",
    "type",
    "types",
    "length",
    "len",
    "size",
    "version",
    "header",
    "prefix",
    "suffix",
    "format",
    "env",
    "field",
    "param",
    "count",
    "expiry",
    "expires",
    "expiration",
    "exp",
    "ttl",
    "timeout",
    "algorithm",
    "alg",
    "method",
    "mode",
    "provider",
    "scope",
    "scopes",
    "label",
    "description",
    "desc",
    "help",
    "hint",
    "enabled",
    "required",
    "location",
    "store",
    "region",
    "user",
    "username",
    "login",
    "email",
    "owner",
    "host",
    "port",
    "ip",
    "address",
    "addr",
    "kind",
    "policy",
    "created",
    "updated",
    "at",
    "date",
    "time",
    "status",
    "regex",
    "pattern",
    "placeholder",
    "example",
    "usage",
    "index",
    "position",
    "offset",
    "limit",
    "min",
    "max",
    "strength",
    "pool",
    "manager",
    "service",
    "handler",
    "factory",
    "class",
    "module",
    "var",
    "variable",
    "arn",
    "ref",
    "source",
    "check",
    "hash",
    "digest",
    "fingerprint",
    "level",
    "levels",
    "list",
    "map",
    "set",
    "mapping",
    "by",
    "from",
    "ms",
    "seconds",
    "secs",
    "days",
    "error",
    "errors",
    "message",
    "msg",
    "text",
    "title",
    "display",
    "count",
    "pem",
    "pub",
    "public",
    "issuer",
    "audience",
    "aud",
    "store",
    "keyboard",
    "generator",
    "gen",
    "sha",
    "md5",
    "bits",
    "exists",
    "present",
    "valid",
    "invalid",
    "missing",
    "required",
    "type",
    "flag",
    "flags",
    "option",
    "options",
];

/// Words after `key` that make it something other than a key's value
/// (`keyPair`, `key_pressed`, `KeyMeshing`, `keyboard`-like names).
const AFTER_KEY: &[&str] = &[
    "pair",
    "pairs",
    "press",
    "pressed",
    "mesh",
    "meshing",
    "ring",
    "board",
    "frame",
    "code",
    "codes",
    "selector",
    "stone",
    "word",
    "words",
    "up",
    "down",
    "left",
    "right",
    "alias",
    "signature",
    "signatures",
    "event",
    "events",
    "binding",
    "bindings",
    "stroke",
    "strokes",
    "vault",
    "path",
    "spec",
    "schema",
    "usage",
    "rotation",
];

/// Generic words that name a secret only as a key of their own (`api: …`)
/// or before another word (`api_key`, `access_token`), not as the last word
/// of a longer name (`slf4j-api`, `graphdb-api:jar`).
const WEAK_WORDS: &[&str] = &["api", "access", "private", "license", "webhook"];

/// Published example values that are not anyone's secret.
const KNOWN_PUBLIC: &[&[u8]] = &[
    // gitleaks' own allowlist: a widely copied example key and UUID.
    b"6fe4476ee5a1832882e326b506d14126",
    b"014df517-39d1-4453-b7b3-9930c563627c",
];

/// Words just before the secret word that make the whole name non-secret
/// (`public_key`, `primary_key`, `next_page_token`, `max_tokens`).
const NOT_SECRET_QUALIFIER: &[&str] = &[
    "public",
    "pub",
    "primary",
    "foreign",
    "partition",
    "sort",
    "cache",
    "idempotency",
    "dedup",
    "dedupe",
    "routing",
    "lookup",
    "index",
    "idx",
    "natural",
    "sequence",
    "schema",
    "bucket",
    "row",
    "shard",
    "group",
    "host",
    "known",
    "page",
    "next",
    "continuation",
    "cursor",
    "sync",
    "csrf",
    "xsrf",
    "authenticity",
    "anti",
    "forgery",
    "max",
    "min",
    "input",
    "output",
    "total",
    "prompt",
    "completion",
    "completions",
    "reasoning",
    "cached",
    "num",
    "remaining",
    "hot",
    "sign",
    "ssh",
    "gpg",
    "pgp",
    "verify",
    "verification",
    "by",
    "map",
    "no",
    "has",
    "is",
    "use",
    "with",
    "without",
    "require",
    "requires",
    "required",
    "forgot",
    "reset",
    "new",
    "old",
    "confirm",
    "repeat",
    "show",
    "hide",
    "toggle",
    "lost",
    "foreign",
    "composite",
    "unique",
    "region",
    "turkey",
    "monkey",
    "donkey",
];

/// Substrings that mark a value as a placeholder (compared lowercase).
const PLACEHOLDER_WORDS: &[&str] = &[
    "xxx",
    "***",
    "...",
    "\u{2026}",
    "\u{2022}",
    "your",
    "example",
    "sample",
    "placeholder",
    "changeme",
    "change_me",
    "change-me",
    "dummy",
    "redacted",
    "insert",
    "replace",
    "notreal",
    "not_real",
    "not-real",
    "fake",
    "lorem",
    "ipsum",
    "foobar",
    "secret",
    "password",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "qwerty",
    "asdf",
    "todo",
    "tbd",
    "fixme",
    "<",
    ">",
    "${",
    "{{",
    "}}",
    "%s",
    "(",
    ")",
];

/// What kind of name the key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    /// A password-like name: short values (8+) with two character classes.
    Password,
    /// A key, token, secret…: token-shaped values (12+).
    Token,
    /// Only a provider's name: long, high-entropy values (16+).
    Provider,
}

fn key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
}

/// Scan a keyword hit at `ks..ke`. `seen_to` is the end of the last key
/// scanned, so a key hit by several keywords is scanned once.
pub(crate) fn scan(text: &[u8], ks: usize, ke: usize, seen_to: &mut usize, out: &mut Vec<Span>) {
    let mut start = ks;
    while start > 0 && ks - start < MAX_KEY && text.get(start - 1).copied().is_some_and(key_byte) {
        start -= 1;
    }
    let mut end = ke;
    while end - start < MAX_KEY && text.get(end).copied().is_some_and(key_byte) {
        end += 1;
    }
    if start < *seen_to {
        return;
    }
    *seen_to = end;
    let Some(raw_key) = text.get(start..end) else {
        return;
    };
    // A command-line flag (`--token`, `-api-key`).
    let dashes = raw_key.iter().take_while(|&&b| b == b'-').count();
    let flag =
        dashes > 0 && (start == 0 || text.get(start - 1).is_some_and(|b| b.is_ascii_whitespace()));
    let key = trim_key(raw_key.get(dashes..).unwrap_or_default());
    let before = start.checked_sub(1).and_then(|i| text.get(i)).copied();
    // A host or a path segment (`https://api.example.com:8443/…`): the `:`
    // after it starts a port, not a value.
    if before == Some(b'/') {
        return;
    }
    // The cheap test first: most keyword hits in prose have no assignment.
    let Some((vs, ve)) = value_after(text, start, end, before, flag, key) else {
        return;
    };
    let Some(value) = text.get(vs..ve) else {
        return;
    };
    // What every kind of value needs (see `plausible_secret`), checked
    // before the key is split into words: most hits in logs are names like
    // `path` or `session` with a short, path-like or letterless value.
    if !value_may_be_secret(value) {
        return;
    }
    let Some(kind) = classify_key(key) else {
        return;
    };
    // Cut short for display (`sk_live_51H...`, `abc…`): not the secret.
    let after = text.get(ve..).unwrap_or_default();
    if after.starts_with(b"..") || after.starts_with("\u{2026}".as_bytes()) {
        return;
    }
    if plausible_secret(value, kind) && !echoes_key(key, value) {
        out.push(Span {
            start: vs,
            end: ve,
            label: LABEL,
        });
    }
}

/// Strip trailing dots (`api.key.` at a sentence end) from a key.
fn trim_key(key: &[u8]) -> &[u8] {
    let mut k = key;
    while let [rest @ .., b'.' | b'-'] = k {
        k = rest;
    }
    k
}

/// Most words a key is split into; the rest are ignored.
const MAX_WORDS: usize = 16;

/// A key split into lowercase words, without allocating: split on `_ - .`,
/// on lower→upper case changes (`apiKey`) and before the last capital of a
/// capital run followed by lowercase (`APIKey` → `api`, `key`).
struct Words {
    buf: [u8; MAX_KEY],
    spans: [(usize, usize); MAX_WORDS],
    n: usize,
}

impl Words {
    fn new(key: &[u8]) -> Self {
        let mut w = Self {
            buf: [0; MAX_KEY],
            spans: [(0, 0); MAX_WORDS],
            n: 0,
        };
        let mut cur: Option<usize> = None;
        for (i, &b) in key.iter().enumerate().take(MAX_KEY) {
            if let Some(slot) = w.buf.get_mut(i) {
                *slot = b.to_ascii_lowercase();
            }
            let prev = i.checked_sub(1).and_then(|j| key.get(j)).copied();
            let next = key.get(i + 1).copied();
            let boundary = !b.is_ascii_alphanumeric()
                || match prev {
                    Some(p) if b.is_ascii_uppercase() => {
                        p.is_ascii_lowercase()
                            || (p.is_ascii_uppercase()
                                && next.is_some_and(|x| x.is_ascii_lowercase()))
                    }
                    _ => false,
                };
            if boundary {
                if let Some(s) = cur.take() {
                    w.push(s, i);
                }
            }
            if b.is_ascii_alphanumeric() && cur.is_none() {
                cur = Some(i);
            }
        }
        if let Some(s) = cur {
            w.push(s, key.len().min(MAX_KEY));
        }
        w
    }

    fn push(&mut self, start: usize, end: usize) {
        if let Some(slot) = self.spans.get_mut(self.n) {
            *slot = (start, end);
            self.n += 1;
        }
    }

    fn len(&self) -> usize {
        self.n
    }

    fn get(&self, i: usize) -> Option<&[u8]> {
        if i >= self.n {
            return None;
        }
        let &(s, e) = self.spans.get(i)?;
        self.buf.get(s..e)
    }

    fn last(&self) -> Option<&[u8]> {
        self.n.checked_sub(1).and_then(|i| self.get(i))
    }
}

/// A word list, sorted once for binary search.
struct Table(
    std::sync::OnceLock<Vec<&'static [u8]>>,
    &'static [&'static str],
);

impl Table {
    const fn new(words: &'static [&'static str]) -> Self {
        Self(std::sync::OnceLock::new(), words)
    }

    fn contains(&self, w: &[u8]) -> bool {
        self.0
            .get_or_init(|| {
                let mut v: Vec<&[u8]> = self.1.iter().map(|s| s.as_bytes()).collect();
                v.sort_unstable();
                v
            })
            .binary_search(&w)
            .is_ok()
    }
}

static SECRET: Table = Table::new(SECRET_WORDS);
static PROVIDER: Table = Table::new(PROVIDER_WORDS);
static NOT_LAST: Table = Table::new(NOT_SECRET_LAST);
static QUALIFIER: Table = Table::new(NOT_SECRET_QUALIFIER);
static AFTER: Table = Table::new(AFTER_KEY);
static WEAK: Table = Table::new(WEAK_WORDS);

/// `token1`, `secret2`: a numbered name is still the name.
fn strip_digits(w: &[u8]) -> &[u8] {
    let n = w.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    w.get(..w.len() - n).unwrap_or(w)
}

/// Is the key's last word one that says "not the secret itself"
/// (`session_id` excepted: that is the session)?
fn last_word_disqualifies(words: &Words) -> bool {
    let Some(last) = words.last() else {
        return false;
    };
    NOT_LAST.contains(last)
        && !(last == b"id"
            && words
                .len()
                .checked_sub(2)
                .and_then(|i| words.get(i))
                .is_some_and(|w| w == b"session"))
}

/// Is word `i` a `key` followed by a word that makes it no key
/// (`keyPair`), or a secret word after a qualifier (`public_key`)?
fn qualified_away(words: &Words, i: usize) -> bool {
    let Some(w) = words.get(i).map(strip_digits) else {
        return false;
    };
    (w == b"key" && words.get(i + 1).is_some_and(|x| AFTER.contains(x)))
        || (SECRET.contains(w)
            && i.checked_sub(1)
                .and_then(|j| words.get(j))
                .is_some_and(|q| QUALIFIER.contains(q)))
}

/// Does the name before a generic rule's value say the value is not a
/// secret (`next_page_token`, `api_key_id`, `keyPressed`, `public_key`)?
/// `prefix` is the match up to the value; its last identifier is the key.
pub(crate) fn key_says_not_secret(prefix: &[u8]) -> bool {
    let mut end = prefix.len();
    while end > 0 && prefix.get(end - 1).is_some_and(|&b| !key_byte(b)) {
        end -= 1;
    }
    let mut start = end;
    while start > 0 && end - start < MAX_KEY && prefix.get(start - 1).copied().is_some_and(key_byte)
    {
        start -= 1;
    }
    let words = Words::new(trim_key(prefix.get(start..end).unwrap_or_default()));
    last_word_disqualifies(&words) || (0..words.len()).any(|i| qualified_away(&words, i))
}

fn classify_key(key: &[u8]) -> Option<KeyKind> {
    let words = Words::new(key);
    let n = words.len();
    let last = words.last()?;
    if last_word_disqualifies(&words) {
        return None;
    }
    // A lone `pass` is too common a verb.
    if n == 1 && last == b"pass" {
        return None;
    }
    let mut kind = None;
    for i in 0..n {
        if qualified_away(&words, i) {
            return None;
        }
        let Some(w) = words.get(i).map(strip_digits) else {
            continue;
        };
        // `api`, `access`, … as the last word of a longer name
        // (`slf4j-api`) name a library, not a secret.
        if WEAK.contains(w) && n > 1 && i + 1 == n {
            continue;
        }
        if SECRET.contains(w) {
            let password = matches!(
                w,
                b"password" | b"passwords" | b"passwd" | b"pwd" | b"pass" | b"passphrase"
            );
            kind = Some(if password || kind == Some(KeyKind::Password) {
                KeyKind::Password
            } else {
                KeyKind::Token
            });
        } else if kind.is_none() && PROVIDER.contains(w) {
            kind = Some(KeyKind::Provider);
        }
    }
    kind
}

/// Find the value after the key at `key_start..end`. `before` is the byte before
/// the key (an opening quote or `<`), `flag` says the key is a CLI flag.
fn value_after(
    text: &[u8],
    key_start: usize,
    end: usize,
    before: Option<u8>,
    flag: bool,
    key: &[u8],
) -> Option<(usize, usize)> {
    let at = |i: usize| text.get(i).copied();
    let mut p = end;
    let mut quoted_key = false;
    // Closing quote of the key (also JSON-escaped: `\"`).
    if let Some(q @ (b'"' | b'\'' | b'`')) = before {
        if at(p) == Some(q) {
            p += 1;
            quoted_key = true;
        } else if at(p) == Some(b'\\') && at(p + 1) == Some(q) {
            p += 2;
            quoted_key = true;
        }
    }
    // `ENV['KEY']`, `config["token"]`.
    if at(p) == Some(b']') {
        p += 1;
    }
    // XML element `<password>value</password>`, or a named one:
    // `<string name="api_key">value</string>`.
    if (before == Some(b'<') || quoted_key) && at(p) == Some(b'>') {
        let vs = p + 1;
        let ve = run(text, vs, |b| b != b'<' && b != b'\n' && b != b'\r');
        if at(ve) != Some(b'<') {
            return None;
        }
        let (vs, ve) = trim_ws(text, vs, ve);
        // One token only: no blanks or quotes between the tags.
        if text.get(vs..ve).is_none_or(|v| {
            v.iter()
                .any(|b| b.is_ascii_whitespace() || b"\"'`".contains(b))
        }) {
            return None;
        }
        // Jenkins-style `{AQAAABAAAA…}`.
        let (vs, ve) = strip_braces(text, vs, ve);
        return (ve > vs).then_some((vs, ve));
    }
    // A name/value pair: `- name: API_KEY` then `value: "…"` on the next
    // line (Kubernetes, GitHub Actions), or `{ name = "API_KEY", value = "…" }`.
    if matches!(at(p), Some(b'\n' | b'\r' | b',' | b' ' | b'\t'))
        && names_a_value(text, before, key_start)
    {
        let mut q = p;
        let limit = p + 32;
        while q < limit && matches!(at(q), Some(b' ' | b'\t' | b'\r' | b'\n' | b',' | b'-')) {
            q += 1;
        }
        let word = text.get(q..q + 5).map(<[u8]>::to_ascii_lowercase);
        if word.as_deref() == Some(b"value".as_slice()) {
            let mut r = q + 5;
            if matches!(at(r), Some(b'"' | b'\'')) {
                r += 1;
            }
            return value_after(text, q, r, None, false, b"value");
        }
    }
    let gap_start = p;
    p = skip_gap(text, p);
    let gap = p > gap_start;
    let op_len = match (at(p), at(p + 1), at(p + 2)) {
        (Some(b':'), Some(b':'), Some(b'=')) => 3,
        (Some(b'|'), Some(b'|'), Some(b'=')) => 3,
        (Some(b':' | b'?' | b'='), Some(b'='), _) => 2,
        (Some(b'='), Some(b'>'), _) => 2,
        (Some(b'='), _, _) => 1,
        (Some(b':'), Some(b':'), _) => 0,
        (Some(b':'), _, _) => 1,
        (Some(b','), _, _) if quoted_key => 1,
        (Some(b'('), Some(b'"' | b'\''), _) if !gap => 1,
        _ => 0,
    };
    if op_len == 0 {
        // `--token VALUE`, `.netrc`'s `password VALUE`.
        let netrc = matches!(key, b"password" | b"passwd");
        if !(flag || netrc) || !gap {
            return None;
        }
    }
    p += op_len;
    p = skip_gap(text, p);
    // Opening quote of the value (also `\"`).
    let mut quote = None;
    match (at(p), at(p + 1)) {
        (Some(q @ (b'"' | b'\'' | b'`')), _) => {
            quote = Some(q);
            p += 1;
        }
        (Some(b'\\'), Some(q @ (b'"' | b'\''))) => {
            quote = Some(q);
            p += 2;
        }
        _ => {}
    }
    let vs = p;
    let ve = match quote {
        Some(q) => run(text, vs, |b| b != q && b != b'\\' && b > b' ' && b != 0x7f),
        None => run(text, vs, unquoted_value_byte),
    };
    // Sentence punctuation after an unquoted value.
    let mut ve = ve;
    if quote.is_none() {
        while ve > vs && matches!(at(ve - 1), Some(b'.' | b':' | b'!' | b'?')) {
            ve -= 1;
        }
    }
    (ve > vs).then_some((vs, ve))
}

/// Is the key at `key_start` itself the value of a `name` field
/// (`name: API_KEY`, `"name": "API_KEY"`, `name = "API_KEY"`)?
fn names_a_value(text: &[u8], before: Option<u8>, key_start: usize) -> bool {
    let mut i = key_start;
    if matches!(before, Some(b'"' | b'\'')) {
        i = i.saturating_sub(1);
    }
    // Walk back (at most 12 bytes): blanks and quotes, `:` or `=`, blanks
    // and quotes again, then `name`, case-insensitively.
    let lo = i.saturating_sub(12);
    let skip = |mut i: usize| {
        while i > lo && matches!(text.get(i - 1), Some(b' ' | b'\t' | b'"' | b'\'')) {
            i -= 1;
        }
        i
    };
    i = skip(i);
    if i <= lo || !matches!(text.get(i - 1), Some(b':' | b'=')) {
        return false;
    }
    i = skip(i - 1);
    i.checked_sub(4)
        .and_then(|s| text.get(s..i))
        .is_some_and(|w| w.eq_ignore_ascii_case(b"name"))
}

fn unquoted_value_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+/=_.~!@#$%^*?:-".contains(&b)
}

/// End of the run of bytes from `from` satisfying `ok`, capped.
fn run(text: &[u8], from: usize, ok: impl Fn(u8) -> bool) -> usize {
    let mut i = from;
    while i - from <= MAX_VALUE && text.get(i).copied().is_some_and(&ok) {
        i += 1;
    }
    i
}

fn skip_gap(text: &[u8], from: usize) -> usize {
    let mut i = from;
    while i - from < MAX_GAP && matches!(text.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

fn trim_ws(text: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while s < e && text.get(s).is_some_and(u8::is_ascii_whitespace) {
        s += 1;
    }
    while e > s && text.get(e - 1).is_some_and(u8::is_ascii_whitespace) {
        e -= 1;
    }
    (s, e)
}

fn strip_braces(text: &[u8], s: usize, e: usize) -> (usize, usize) {
    if e >= s + 2 && text.get(s) == Some(&b'{') && text.get(e - 1) == Some(&b'}') {
        (s + 1, e - 1)
    } else {
        (s, e)
    }
}

/// Does the value repeat part of its own name (`KeyPair = X25519.KeyPair`,
/// `SN_KeyMeshing = "id-KeyMeshing"`)? Then it names a thing, it is not one.
fn echoes_key(key: &[u8], value: &[u8]) -> bool {
    let key = key.to_ascii_lowercase();
    let value = value.to_ascii_lowercase();
    key.windows(6)
        .any(|w| w.iter().all(u8::is_ascii_alphabetic) && value.windows(6).any(|v| v == w))
}

/// Does `value`, assigned to a key of this kind, look like a real secret?
/// Necessary for [`plausible_secret`] whatever the key's kind: at least the
/// smallest length floor, at most [`MAX_VALUE`], a letter, and no path start.
fn value_may_be_secret(value: &[u8]) -> bool {
    (8..=MAX_VALUE).contains(&value.len())
        && !matches!(value.first(), Some(b'/' | b'~'))
        && value.iter().any(u8::is_ascii_alphabetic)
}

fn plausible_secret(value: &[u8], kind: KeyKind) -> bool {
    let len = value.len();
    let min = match kind {
        KeyKind::Password => 8,
        KeyKind::Token => 12,
        KeyKind::Provider => 16,
    };
    if len < min || len > MAX_VALUE {
        return false;
    }
    if is_placeholder(value) || not_a_token(value) || KNOWN_PUBLIC.contains(&value) {
        return false;
    }
    let has_digit = value.iter().any(u8::is_ascii_digit);
    let has_lower = value.iter().any(u8::is_ascii_lowercase);
    let has_upper = value.iter().any(u8::is_ascii_uppercase);
    let has_symbol = value.iter().any(|b| !b.is_ascii_alphanumeric());
    let classes = [has_digit, has_lower, has_upper, has_symbol]
        .iter()
        .filter(|&&c| c)
        .count();
    match kind {
        KeyKind::Password => {
            if classes < 2 || !(has_lower || has_upper) {
                return false;
            }
        }
        KeyKind::Token | KeyKind::Provider => {
            if !has_digit || !(has_lower || has_upper) {
                return false;
            }
        }
    }
    let alphabet = alphabet_size(value);
    let scale = if kind == KeyKind::Provider {
        0.75
    } else {
        0.62
    };
    let floor = scale * (len.min(alphabet) as f64).log2();
    shannon_entropy(value) >= floor
}

/// The size of the smallest usual alphabet the value is written in.
fn alphabet_size(v: &[u8]) -> usize {
    let hex = v.iter().all(u8::is_ascii_hexdigit)
        && (v.iter().all(|b| !b.is_ascii_uppercase()) || v.iter().all(|b| !b.is_ascii_lowercase()));
    let uuid_like = v.iter().all(|&b| b.is_ascii_hexdigit() || b == b'-');
    if hex || uuid_like {
        16
    } else if v
        .iter()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        || v.iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        36
    } else {
        64
    }
}

/// URLs, paths, e-mail addresses, versions, dates, IP addresses and dotted
/// identifiers: assigned to a key named `…_key` they are still not secrets.
fn not_a_token(v: &[u8]) -> bool {
    let contains = |needle: &[u8]| v.windows(needle.len()).any(|w| w == needle);
    if contains(b"://") {
        return true;
    }
    if matches!(v.first(), Some(b'/' | b'~')) || v.starts_with(b"./") || v.starts_with(b"../") {
        return true;
    }
    // e-mail: local@domain.tld
    if let Some(at) = v.iter().position(|&b| b == b'@') {
        let domain = v.get(at + 1..).unwrap_or_default();
        if at > 0 && domain.contains(&b'.') && domain.iter().all(|&b| key_byte(b)) {
            return true;
        }
    }
    // versions, dates, times, IPs: digits and separators only (after an
    // optional leading `v`).
    let body = v.strip_prefix(b"v").unwrap_or(v);
    if body
        .iter()
        .all(|&b| b.is_ascii_digit() || b".:-_/TZ+".contains(&b))
    {
        return true;
    }
    // Dotted identifiers of words (`com.example.app`, `settings.api.key2`)
    // and file names (`key.pem`, `secret.json`).
    if v.contains(&b'.')
        && v.split(|&b| b == b'.').all(|seg| {
            !seg.is_empty()
                && seg.len() <= 24
                && seg
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
                && seg.iter().filter(|b| b.is_ascii_digit()).count() <= 3
                && seg
                    .first()
                    .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
        })
    {
        return true;
    }
    slug(v)
}

/// A name made of words and numbers (`cmp2-qat-1208358310`,
/// `rc0.15.0_20231217-SNAPSHOT`): three or more parts, each all letters,
/// all digits, or at most four characters.
fn slug(v: &[u8]) -> bool {
    let parts: Vec<&[u8]> = v
        .split(|b| matches!(b, b'-' | b'_' | b'.'))
        .filter(|p| !p.is_empty())
        .collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            p.len() <= 4
                || p.iter().all(u8::is_ascii_alphabetic)
                || p.iter().all(u8::is_ascii_digit)
        })
}

/// Placeholders and examples: `xxxxx`, `<your-key>`, `${VAR}`, `changeme`,
/// `1234567890`, `abcdef…`, `aaaaaaaa`, `1234-1234-1234`, values cut short
/// with `...`, `$VAR`/`%VAR%`/`@VAR@` templates.
pub(crate) fn is_placeholder(v: &[u8]) -> bool {
    let lower: Vec<u8> = v.iter().map(u8::to_ascii_lowercase).collect();
    let contains = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
    if PLACEHOLDER_WORDS.iter().any(|w| contains(w.as_bytes())) {
        return true;
    }
    // Templates: `$VAR`, `%VAR%`, `@VAR@`, `#{x}`.
    match (v.first(), v.get(1)) {
        (Some(b'$'), Some(b)) if b.is_ascii_alphabetic() || *b == b'_' || *b == b'{' => {
            return true;
        }
        (Some(b'%' | b'@'), Some(b)) if b.is_ascii_alphabetic() || *b == b'_' => return true,
        (Some(b'#'), Some(b'{')) => return true,
        _ => {}
    }
    repeated_chars(&lower) || sequence_heavy(&lower) || repeated_block(&lower)
}

/// One character four times in a row (five for long values), or one
/// character making up more than a third of the value.
fn repeated_chars(v: &[u8]) -> bool {
    let limit = if v.len() >= 24 { 5 } else { 4 };
    let mut runlen = 1;
    for w in v.windows(2) {
        if w.first() == w.get(1) {
            runlen += 1;
            if runlen >= limit {
                return true;
            }
        } else {
            runlen = 1;
        }
    }
    if v.len() >= 8 {
        let mut counts = [0usize; 256];
        for &b in v {
            if let Some(c) = counts.get_mut(usize::from(b)) {
                *c += 1;
            }
        }
        let max = counts.iter().copied().max().unwrap_or(0);
        if max * 3 > v.len() {
            return true;
        }
    }
    false
}

/// An ascending or descending run of five (`12345`, `abcde`, `98765`; `9→0`
/// continues a digit run), or half the value in runs of three or more.
fn sequence_heavy(v: &[u8]) -> bool {
    let next = |a: u8, b: u8, dir: i8| -> bool {
        if !(a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric()) {
            return false;
        }
        match dir {
            1 => b == a.wrapping_add(1) || (a == b'9' && b == b'0'),
            _ => a == b.wrapping_add(1) || (a == b'0' && b == b'9'),
        }
    };
    let mut covered = 0usize;
    for dir in [1i8, -1] {
        let mut runlen = 1usize;
        for (i, w) in v.windows(2).enumerate() {
            let (Some(&a), Some(&b)) = (w.first(), w.get(1)) else {
                continue;
            };
            if next(a, b, dir) {
                runlen += 1;
                if runlen >= 5 {
                    return true;
                }
            } else {
                if runlen >= 3 {
                    covered += runlen;
                }
                runlen = 1;
            }
            if i + 2 == v.len() && runlen >= 3 {
                covered += runlen;
            }
        }
    }
    covered * 2 > v.len()
}

/// A block of 3–8 bytes repeated back to back at least three times
/// (`1234-1234-1234`, `abcabcabc`).
fn repeated_block(v: &[u8]) -> bool {
    for size in 3..=8usize {
        if v.len() < size * 3 {
            break;
        }
        for start in 0..=(v.len() - size * 3) {
            let block = v.get(start..start + size);
            if block.is_some()
                && v.get(start + size..start + 2 * size) == block
                && v.get(start + 2 * size..start + 3 * size) == block
            {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<String> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut seen = 0;
        let lower = text.to_ascii_lowercase();
        for w in SECRET_WORDS.iter().chain(PROVIDER_WORDS) {
            let mut from = 0;
            while let Some(i) = lower.get(from..).and_then(|s| s.find(w)) {
                let ks = from + i;
                seen = 0;
                scan(bytes, ks, ks + w.len(), &mut seen, &mut out);
                from = ks + 1;
            }
        }
        let _ = seen;
        let mut v: Vec<String> = out
            .iter()
            .map(|s| text.get(s.start..s.end).unwrap().to_owned())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn shapes() {
        let s = "Zx81kQ0pLm29sJd7Fh3W";
        let hex = "4f9d3c2b1a0e8f7d6c5b4a3928171605";
        let uuid = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d";
        for text in [
            format!("PROVIDER_API_KEY={hex}"),
            format!("export PROVIDER_TOKEN=\"{s}\""),
            format!("\"apiKey\": \"{s}\""),
            format!("{{\\\"apiKey\\\": \\\"{s}\\\"}}"),
            format!("token: {uuid}"),
            format!("Using Key = {hex} for upload"),
            format!("curl -H 'X-Api-Key: {s}' https://x"),
            format!("tool --token {s} --verbose"),
            format!("tool --api-key={s}"),
            format!("<apiToken>{s}</apiToken>"),
            format!("<password>{{{s}}}</password>"),
            format!("<add key=\"x\" secret=\"{s}\"/>"),
            format!("machine api.example.com login me password {s}"),
            format!("db.password={s}"),
            format!("Server=db;User Id=app;Password={s};"),
            format!("$apiKey = '{s}';"),
            format!("'api_key' => '{s}',"),
            format!("apiKey := \"{s}\""),
            format!("os.environ.setdefault(\"API_KEY\", \"{s}\")"),
            format!("client.setApiKey(\"{s}\")"),
            format!("Cookie: sessionid={s}; path=/"),
            format!("ENV['SECRET_TOKEN'] = '{s}'"),
            format!("secret_key = \"{hex}\""),
            format!("DATADOG_API: {hex}"),
            format!("        - name: PROVIDER_API_KEY\n          value: \"{s}\""),
            format!("{{ name = \"PROVIDER_TOKEN\", value = \"{s}\" }}"),
        ] {
            let f = found(&text);
            assert_eq!(f.len(), 1, "{text}: {f:?}");
            assert!([s, hex, uuid].contains(&f[0].as_str()), "{text}: {f:?}");
        }
    }

    #[test]
    fn left_alone() {
        for text in [
            "api_key=xxxxxxxxxxxxxxxxxxxx",
            "api_key=<your-api-key>",
            "api_key=${API_KEY}",
            "password: changeme",
            "password: ********",
            "token: 1234567890abcdef",
            "token = \"aaaaaaaaaaaaaaaaaaaaaa1\"",
            "token: abcdefghijklmnop12",
            "api_key_id: 9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d",
            "public_key: 9b1deb4d3b7d4bad9bdd2b0d7b3dcb6d",
            "next_page_token: CAUQAA12345xyzAB",
            "token_url: https://auth.example.com/oauth/token",
            "key: settings.api.key2",
            "api_version: 2024-01-01",
            "token bucket refilled",
            "the key is important",
            "authenticated via session cookie",
            "max_tokens: 4096",
            "\"key\": \"menu.file.open\"",
            "password_file=/run/secrets/db",
            "API_KEY=YOUR_API_KEY_HERE",
            "token: xoxp-1234-1234-1234-abcd",
            "key = ops_eyJzaWduSW5BZGRyZXNzIjoiaHR0cHM6...",
            "email_password: user@example.com",
            "private: true",
            "{\"dbPassword\": \"<your-api-key>\", \"region\": \"us-east-1\"}",
            "- name: API_KEY\n  value: ${{ secrets.API_KEY }}",
            "event-bus-message-api:rc0.15.0_20231217_1420-SNAPSHOT'",
            "[DEBUG]\t\torg.slf4j.slf4j-api:jar:1.7.8.:compile",
            "  keyVaultToStoreSecrets: cmp2-qat-1208358310",
            ",apiKey:\"6fe4476ee5a1832882e326b506d14126\",",
            "pub const SN_id_Gost28147_89_None_KeyMeshing = \"id-Gost28147-89-None-KeyMeshing\"",
            "KeyPair = X25519.KeyPair",
            "            keyPressed = kVK_Return.u16",
            "Location: https://api.calendar-e2e.com:41234/landing?to=x9Kq2Lm7Zp4Rt8Wv",
            "curl https://api.example.com:8443/v1/tokens/Zx81kQ2mP9rT4wYb",
        ] {
            assert!(found(text).is_empty(), "{text}: {:?}", found(text));
        }
    }

    #[test]
    fn key_words() {
        let split = |k: &[u8]| {
            let w = Words::new(k);
            (0..w.len())
                .map(|i| String::from_utf8(w.get(i).unwrap().to_vec()).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(split(b"APIKey"), ["api", "key"]);
        assert_eq!(split(b"x-api-key"), ["x", "api", "key"]);
        assert_eq!(split(b"clientSecret2"), ["client", "secret2"]);
        assert_eq!(
            split(b"AWS_SECRET_ACCESS_KEY"),
            ["aws", "secret", "access", "key"]
        );
        assert_eq!(split(b"__token__"), ["token"]);
    }

    #[test]
    fn placeholders() {
        for p in [
            "xxxxxxxxxxxx",
            "1234567890",
            "abcdefgh",
            "changeme123",
            "${TOKEN}",
            "$TOKEN",
            "%TOKEN%",
            "<token>",
            "aaaa1111bbbb",
            "1234-1234-1234",
            "abc123abc123abc123",
        ] {
            assert!(is_placeholder(p.as_bytes()), "{p}");
        }
        for s in ["4f9d3c2b1a0e8f7d6c5b4a3928171605", "Zx81kQ0pLm29sJd7Fh3W"] {
            assert!(!is_placeholder(s.as_bytes()), "{s}");
        }
    }
}
