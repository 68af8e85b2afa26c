//! The production switch: `CHOKEPOINT_ENV=production|development`, read by
//! every chokepoint binary, and the start-up checks it turns into hard
//! errors (see docs/production.md).
//!
//! Owns: parsing the switch ([`Mode::from_env`]), the list of start-up
//! conditions ([`Condition`]), the secret-strength test ([`weak_secret`])
//! and the one place that reports a refused start ([`Gate`]: exit 78,
//! EX_CONFIG, one line naming the condition and the fix).
//!
//! Must never: print, log or return a secret (only the variable or file
//! that holds it); let production start with a condition failing; read any
//! other switch. It is std-only (no tokio, no sockets): each binary probes
//! its own dependencies and hands the outcome to a [`Gate`]. It is not in
//! `netpolicy` because it reads the environment and writes to stderr,
//! which the pure decision crate must not do, and every binary (the API
//! included, which depends on neither the worker nor the controller) can
//! use it without pulling anything else in.

#![forbid(unsafe_code)]

use std::fmt;
use std::io::Write as _;
use std::process::ExitCode;

/// The one environment variable that selects the mode.
pub const ENV: &str = "CHOKEPOINT_ENV";

/// EX_CONFIG (sysexits.h): production refused to start.
pub const EX_CONFIG: u8 = 78;

/// The least length of a secret (key or token) in production, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// Development or production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Checks warn; the binary starts.
    Development,
    /// Checks are hard errors (exit 78).
    Production,
}

impl Mode {
    /// `"development"` or `"production"`: the `mode` field of `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Development => "development",
            Mode::Production => "production",
        }
    }

    /// Whether this is production.
    pub fn is_production(self) -> bool {
        self == Mode::Production
    }

    /// Parse the value of [`ENV`]: unset (or empty) is development; any
    /// value but `production` or `development` is refused
    /// ([`Condition::UnknownMode`]), since it may be a misspelled
    /// `production`.
    pub fn parse(value: Option<&str>) -> Result<Mode, Refusal> {
        match value.map(str::trim) {
            None | Some("") => Ok(Mode::Development),
            Some("development") => Ok(Mode::Development),
            Some("production") => Ok(Mode::Production),
            Some(_) => Err(Refusal::new(
                Condition::UnknownMode,
                format!("{ENV} must be `production` or `development` (unset means development)"),
            )),
        }
    }

    /// Read [`ENV`] from this process's environment. In development, print
    /// the one-line warning (every start). An unknown value is reported
    /// (one line naming it) and the caller must exit with [`EX_CONFIG`].
    pub fn from_env(binary: &str) -> Result<Mode, ExitCode> {
        let raw = std::env::var_os(ENV);
        let value = raw.as_ref().map(|v| v.to_str().unwrap_or("\u{fffd}"));
        match Mode::parse(value) {
            Ok(mode) => {
                if mode == Mode::Development {
                    say(&format!(
                        "{binary}: warning: development mode ({ENV} is {}): missing security parts are warnings, not errors; set {ENV}=production in production",
                        if value.is_none_or(|v| v.trim().is_empty()) {
                            "unset"
                        } else {
                            "development"
                        }
                    ));
                }
                Ok(mode)
            }
            Err(r) => {
                say(&format!("{binary}: {r}"));
                Err(ExitCode::from(EX_CONFIG))
            }
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A condition production refuses to start with. Its [`Condition::as_str`]
/// is the name printed on the exit-78 line (and in docs/production.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Condition {
    /// A signing key or service token equal to a shipped example or
    /// development default, shorter than 32 bytes, or visibly low-entropy.
    DefaultSecretKey,
    /// No master key for the credential store, or one that does not open
    /// the store's rows.
    MissingEncryptionKey,
    /// The API cannot reach the worker, or the worker cannot open its store.
    MissingCredentialBroker,
    /// No policy file, an empty one, or one with no org.
    MissingEgressPolicy,
    /// No ready answer from the proxy, or the nft tables are absent.
    EgressProxyDown,
    /// Token verification (API), the service token (worker) or the reload
    /// token (proxy) not configured.
    MissingAuthToken,
    /// The policy's `unsafe_allow_ranges` is not empty.
    UnsafeAllowRanges,
    /// The API without TLS.
    ApiWithoutTls,
    /// `CHOKEPOINT_ENV` holds neither `production` nor `development`.
    UnknownMode,
}

impl Condition {
    /// The condition's name, e.g. `default_secret_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::DefaultSecretKey => "default_secret_key",
            Condition::MissingEncryptionKey => "missing_encryption_key",
            Condition::MissingCredentialBroker => "missing_credential_broker",
            Condition::MissingEgressPolicy => "missing_egress_policy",
            Condition::EgressProxyDown => "egress_proxy_down",
            Condition::MissingAuthToken => "missing_auth_token",
            Condition::UnsafeAllowRanges => "unsafe_allow_ranges",
            Condition::ApiWithoutTls => "api_without_tls",
            Condition::UnknownMode => "unknown_mode",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed condition: its name and a line saying what is wrong and how
/// to fix it. The line names variables and files, never a secret's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Which condition.
    pub condition: Condition,
    /// What is wrong and what to do.
    pub fix: String,
}

impl Refusal {
    /// A refusal of `condition` with this explanation.
    pub fn new(condition: Condition, fix: impl Into<String>) -> Refusal {
        Refusal {
            condition,
            fix: fix.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.condition, self.fix)
    }
}

impl std::error::Error for Refusal {}

fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Collects the outcome of a binary's start-up checks, then decides: in
/// production the first failed condition is one line on stderr and exit
/// 78; in development every failed condition is a one-line warning and the
/// binary starts.
#[derive(Debug)]
pub struct Gate {
    mode: Mode,
    binary: &'static str,
    failed: Vec<Refusal>,
}

impl Gate {
    /// A gate for `binary` (the name prefixed to every line).
    pub fn new(mode: Mode, binary: &'static str) -> Gate {
        Gate {
            mode,
            binary,
            failed: Vec::new(),
        }
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Record a check's outcome.
    pub fn check(&mut self, outcome: Result<(), Refusal>) {
        if let Err(r) = outcome {
            self.failed.push(r);
        }
    }

    /// Record several outcomes (e.g. [`check_policy`]'s).
    pub fn extend(&mut self, refusals: Vec<Refusal>) {
        self.failed.extend(refusals);
    }

    /// Record a failed condition.
    pub fn fail(&mut self, condition: Condition, fix: impl Into<String>) {
        self.failed.push(Refusal::new(condition, fix));
    }

    /// The failed conditions so far.
    pub fn failed(&self) -> &[Refusal] {
        &self.failed
    }

    /// Production with a failed condition: print the first (one line:
    /// `BINARY: production refused: CONDITION: FIX`) and return the exit
    /// code 78. Otherwise print a warning per failed condition (development)
    /// and return `Ok`.
    pub fn finish(self) -> Result<(), ExitCode> {
        match (self.mode, self.failed.first()) {
            (Mode::Production, Some(r)) => {
                say(&format!("{}: production refused: {r}", self.binary));
                Err(ExitCode::from(EX_CONFIG))
            }
            _ => {
                for r in &self.failed {
                    say(&format!(
                        "{}: warning: development: would refuse production: {r}",
                        self.binary
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Values shipped in this tree (examples, docs, tests, benches) or common
/// placeholders: a production secret must be none of them.
const SHIPPED: &[&str] = &[
    "changeme",
    "change-me",
    "secret",
    "password",
    "development",
    "dev-secret",
    "test-admin-token",
    "svc-token-0123456789abcdef",
    "svc-0123456789abcdef0123456789abcdef-runtime",
    "bench-service-token-0123456789",
    "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=",
    "Zx81kQ0pLm29sJd7Fh3W",
];

/// Words that mark a placeholder when the whole secret is built around
/// them (`replace-me-with-…`, `example-token-…`).
const PLACEHOLDER_WORDS: &[&str] = &[
    "changeme",
    "change-me",
    "change_me",
    "replace-me",
    "replaceme",
    "example",
    "placeholder",
    "your-token",
    "your-secret",
    "xxxxxxxx",
];

/// Why a secret is too weak for production, or `None` when it passes.
///
/// `secret` is the file's content with surrounding whitespace removed.
/// Weak: equal to a value shipped in this tree or a placeholder, shorter
/// than [`MIN_SECRET_LEN`] bytes, fewer than 8 distinct bytes, a repeated
/// short pattern, mostly runs and sequences (`aaaa`, `1234`, `abcd`), or
/// under ~96 bits by an empirical-entropy estimate. The answer never
/// contains the secret.
pub fn weak_secret(secret: &[u8]) -> Option<&'static str> {
    let lower = secret.to_ascii_lowercase();
    if SHIPPED
        .iter()
        .any(|s| s.as_bytes().eq_ignore_ascii_case(secret))
    {
        return Some("it equals a value shipped in chokepoint's examples, docs or tests");
    }
    if PLACEHOLDER_WORDS
        .iter()
        .any(|w| contains(&lower, w.as_bytes()))
    {
        return Some("it looks like a placeholder");
    }
    if secret.len() < MIN_SECRET_LEN {
        return Some("it is shorter than 32 bytes");
    }
    let mut seen = [false; 256];
    let mut counts = [0usize; 256];
    for &b in secret {
        if let Some(s) = seen.get_mut(usize::from(b)) {
            *s = true;
        }
        if let Some(c) = counts.get_mut(usize::from(b)) {
            *c += 1;
        }
    }
    if seen.iter().filter(|s| **s).count() < 8 {
        return Some("it has fewer than 8 distinct characters");
    }
    if (1..=secret.len() / 2).any(|p| periodic(secret, p)) {
        return Some("it is a short pattern repeated");
    }
    let steps = secret
        .windows(2)
        .filter(|w| match w {
            [a, b] => a.abs_diff(*b) <= 1,
            _ => false,
        })
        .count();
    if steps * 2 > secret.len() {
        return Some("it is mostly runs or sequences of characters");
    }
    // Empirical entropy (bits per byte) times the length.
    let n = secret.len() as f64;
    let bits: f64 = counts
        .iter()
        .filter(|c| **c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum::<f64>()
        * n;
    if bits < 96.0 {
        return Some("it has too little entropy");
    }
    None
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn periodic(s: &[u8], p: usize) -> bool {
    s.iter().zip(s.iter().skip(p)).all(|(a, b)| a == b)
}

/// Check a secret read from a file: `Err` ([`Condition::DefaultSecretKey`])
/// naming `what` (e.g. `EGRESS_ADMIN_TOKEN_FILE`) and the fix when
/// [`weak_secret`] finds it weak.
pub fn check_secret(what: &str, secret: &[u8]) -> Result<(), Refusal> {
    match weak_secret(secret.trim_ascii()) {
        None => Ok(()),
        Some(why) => Err(Refusal::new(
            Condition::DefaultSecretKey,
            format!(
                "the secret in {what} is not fit for production: {why}; write a new random one (e.g. `openssl rand -hex 32`)"
            ),
        )),
    }
}

/// [`Condition::MissingEgressPolicy`] when the policy file (given by
/// `flag`, e.g. `--policy`) does not exist, cannot be read or holds only
/// whitespace and comments. Run before the policy is parsed, so that a
/// missing file is this condition and not a parse error.
pub fn check_policy_file(flag: &str, path: &std::path::Path) -> Result<(), Refusal> {
    let fix = "write the egress policy (docs/policy.md) with at least one org";
    match std::fs::read_to_string(path) {
        Err(e) => Err(Refusal::new(
            Condition::MissingEgressPolicy,
            format!("{flag} {}: cannot read it ({e}); {fix}", path.display()),
        )),
        Ok(text)
            if text
                .lines()
                .map(str::trim)
                .all(|l| l.is_empty() || l.starts_with('#') || l == "---") =>
        {
            Err(Refusal::new(
                Condition::MissingEgressPolicy,
                format!("{flag} {} is empty; {fix}", path.display()),
            ))
        }
        Ok(_) => Ok(()),
    }
}

/// Whether the policy file does not exist or holds only whitespace and
/// comments (what [`check_policy_file`] calls missing or empty; an
/// unreadable file is neither). In development the proxy and the worker
/// start with an empty policy then (no org: every request is denied).
pub fn policy_file_absent_or_empty(path: &std::path::Path) -> bool {
    match std::fs::read_to_string(path) {
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        Ok(text) => text
            .lines()
            .map(str::trim)
            .all(|l| l.is_empty() || l.starts_with('#') || l == "---"),
    }
}

/// The policy the proxy and the worker use in development when theirs is
/// absent or empty ([`policy_file_absent_or_empty`]): no org, so every
/// request is denied (`unknown_client` / `unknown_org`).
pub const EMPTY_POLICY: &str = "version: v1\norgs: {}\n";

/// The checks on a parsed policy: at least one org
/// ([`Condition::MissingEgressPolicy`]) and no `unsafe_allow_ranges`
/// ([`Condition::UnsafeAllowRanges`]).
pub fn check_policy(flag: &str, orgs: usize, unsafe_allow_ranges: usize) -> Vec<Refusal> {
    let mut out = Vec::new();
    if orgs == 0 {
        out.push(Refusal::new(
            Condition::MissingEgressPolicy,
            format!("{flag}: the policy has no org; add one under `orgs:` (docs/policy.md)"),
        ));
    }
    if unsafe_allow_ranges > 0 {
        out.push(Refusal::new(
            Condition::UnsafeAllowRanges,
            format!(
                "{flag}: the policy's `unsafe_allow_ranges` lists {unsafe_allow_ranges} range(s) exempt from the blocklist; remove them (they are for tests)"
            ),
        ));
    }
    out
}

/// `GET /readyz` on `target` (`IP:PORT`, or `unix:PATH` for a unix
/// socket) with `timeout` for each of connect, write and read: `Ok` only on
/// a `200` status line. The error names the target and the failure.
pub fn probe_readyz(target: &str, timeout: std::time::Duration) -> Result<(), String> {
    use std::io::Read as _;
    const REQUEST: &[u8] = b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    fn exchange<S: std::io::Read + std::io::Write>(mut s: S) -> std::io::Result<Vec<u8>> {
        s.write_all(REQUEST)?;
        let mut buf = Vec::with_capacity(256);
        s.take(4096).read_to_end(&mut buf)?;
        Ok(buf)
    }
    let answer = if let Some(path) = target.strip_prefix("unix:") {
        let s = std::os::unix::net::UnixStream::connect(path)
            .map_err(|e| format!("{target}: cannot connect: {e}"))?;
        s.set_read_timeout(Some(timeout))
            .and_then(|()| s.set_write_timeout(Some(timeout)))
            .map_err(|e| format!("{target}: {e}"))?;
        exchange(s)
    } else {
        let addr: std::net::SocketAddr = target
            .parse()
            .map_err(|_| format!("`{target}` is not IP:PORT or unix:PATH"))?;
        let s = std::net::TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("{target}: cannot connect: {e}"))?;
        s.set_read_timeout(Some(timeout))
            .and_then(|()| s.set_write_timeout(Some(timeout)))
            .map_err(|e| format!("{target}: {e}"))?;
        exchange(s)
    }
    .map_err(|e| format!("{target}: no answer: {e}"))?;
    let status = answer.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut words = status.split(|b| *b == b' ');
    match (words.next(), words.next()) {
        (Some(v), Some(b"200")) if v.starts_with(b"HTTP/1.") => Ok(()),
        _ => Err(format!(
            "{target}: /readyz answered `{}`",
            String::from_utf8_lossy(status.get(..status.len().min(40)).unwrap_or_default()).trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parse() {
        assert_eq!(Mode::parse(None), Ok(Mode::Development));
        assert_eq!(Mode::parse(Some("")), Ok(Mode::Development));
        assert_eq!(Mode::parse(Some("development")), Ok(Mode::Development));
        assert_eq!(Mode::parse(Some("production")), Ok(Mode::Production));
        for bad in ["prod", "Production", "PRODUCTION", "dev", "staging", "1"] {
            let r = Mode::parse(Some(bad)).unwrap_err();
            assert_eq!(r.condition, Condition::UnknownMode, "{bad}");
        }
    }

    #[test]
    fn strong_secrets_pass() {
        for s in [
            // openssl rand -hex 32
            "3f9c1e7a5b2d8046c1e9f7a3b5d2084e6c1a9f3e7b5d2c8046a1e9f3c7b5d208",
            // openssl rand -base64 32
            "q8Zr1mT4vXk9Lw2Pn6Yb3Hc7Jd0Fs5Ga+Ke/Ru1Wx4o=",
            // 32 base62 characters
            "7Gk2pQ9xWm4Rz8Tn1Vb6Yc3Hd5Js0Lfe",
        ] {
            assert_eq!(weak_secret(s.as_bytes()), None, "{s}");
        }
    }

    #[test]
    fn weak_secrets_fail() {
        let cases: &[(&str, &str)] = &[
            ("svc-token-0123456789abcdef", "shipped"),
            ("SECRET", "shipped"),
            ("changeme-changeme-changeme-changeme", "placeholder"),
            ("this-is-an-example-token-0123456789abcdef", "placeholder"),
            ("9f3c1e7a5b2d80", "shorter"),
            ("abababababababababababababababababab", "distinct"),
            ("a1b2c3d4e5f6g7h8a1b2c3d4e5f6g7h8a1b2c3d4", "repeated"),
            ("0123456789abcdefghijklmnopqrstuvwxyz", "sequences"),
            (
                "aaaaaaaabbbbbbbbccccccccddddddddeeeeeeeeffffffffgggggggghhhhhhhh",
                "sequences",
            ),
        ];
        for (s, want) in cases {
            let why = weak_secret(s.as_bytes()).unwrap_or("PASSED");
            assert!(why.contains(want), "{s}: {why}");
        }
    }

    #[test]
    fn refusal_never_holds_the_secret() {
        let secret = "svc-token-0123456789abcdef";
        let r = check_secret("CHOKEPOINT_WORKER_TOKEN_FILE", secret.as_bytes()).unwrap_err();
        assert_eq!(r.condition, Condition::DefaultSecretKey);
        assert!(!r.to_string().contains(secret));
        assert!(r.to_string().starts_with("default_secret_key: "));
        assert!(r.to_string().contains("CHOKEPOINT_WORKER_TOKEN_FILE"));
    }

    #[test]
    fn gate() {
        let mut g = Gate::new(Mode::Production, "x");
        g.check(Ok(()));
        assert!(g.failed().is_empty());
        g.fail(Condition::MissingAuthToken, "set it");
        assert_eq!(g.finish(), Err(ExitCode::from(EX_CONFIG)));
        let mut g = Gate::new(Mode::Development, "x");
        g.fail(Condition::MissingAuthToken, "set it");
        assert_eq!(g.finish(), Ok(()));
        assert_eq!(Gate::new(Mode::Production, "x").finish(), Ok(()));
    }
}
