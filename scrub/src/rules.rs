//! The rule set: gitleaks' default rules (embedded at build time) plus
//! chokepoint's own rules, behind one keyword prefilter.
//!
//! Owns: parsing the embedded TOML, the keyword Aho-Corasick automaton, lazy
//! per-rule regex compilation, gitleaks' secret-group / entropy / allowlist
//! semantics. Must never: read a file at run time, panic on any input, or run
//! a rule's regex over text where none of its keywords occurs.

use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;

use crate::{Span, context, handle};

/// Keyword-table entry that runs the context rule instead of a regex rule.
const CONTEXT_RULE: usize = usize::MAX;

/// The embedded gitleaks rule file (MIT, attribution in its header).
pub(crate) const GITLEAKS_TOML: &str = include_str!("../rules/gitleaks.toml");

/// The token terminator of gitleaks' generated rules …
const GITLEAKS_TERMINATOR: &str = r#"(?:[\x60'"\s;]|\\[nr]|$)"#;
/// … and the one chokepoint uses instead.
const WIDER_TERMINATOR: &str = r#"(?:[\x60'"\s;,&)\]}>|<]|\\[nr]|$)"#;

/// Compiled-program size cap per regex: a pathological rule fails to compile
/// (and is reported by [`RuleSet::compile_all`]) instead of eating memory.
const REGEX_SIZE_LIMIT: usize = 2 * 1024 * 1024;
/// Lazy-DFA cache cap per regex.
const DFA_SIZE_LIMIT: usize = 2 * 1024 * 1024;
/// Bytes of left context given to a rule around a keyword hit.
const WINDOW_LEFT: usize = 512;
/// Bytes of right context given to a rule around a keyword hit.
const WINDOW_RIGHT: usize = 1024;
/// Right context for rules that span lines (PEM private keys).
const WINDOW_RIGHT_MULTILINE: usize = 16 * 1024;
/// Cap on the "line" an allowlist with `regexTarget = "line"` sees.
const LINE_CAP: usize = 4096;

#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    allowlist: Option<RawAllowlist>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
struct RawRule {
    id: String,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default, rename = "secretGroup")]
    secret_group: Option<usize>,
    #[serde(default)]
    entropy: Option<f64>,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    allowlists: Vec<RawAllowlist>,
}

#[derive(Debug, Default, Deserialize)]
struct RawAllowlist {
    #[serde(default)]
    condition: Option<String>,
    #[serde(default, rename = "regexTarget")]
    regex_target: Option<String>,
    #[serde(default)]
    regexes: Vec<String>,
    #[serde(default)]
    stopwords: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
}

/// What an allowlist regex is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Secret,
    Match,
    Line,
}

#[derive(Debug)]
struct Allowlist {
    target: Target,
    regexes: Vec<Regex>,
    stopwords: Option<AhoCorasick>,
}

impl Allowlist {
    fn build(raw: &RawAllowlist, errors: &mut Vec<String>, ctx: &str) -> Option<Self> {
        // Path-conditioned allowlists: with AND they only apply to files we
        // never see; with OR their path half can never match, the rest stays.
        if !raw.paths.is_empty() && raw.condition.as_deref() == Some("AND") {
            return None;
        }
        let target = match raw.regex_target.as_deref() {
            Some("match") => Target::Match,
            Some("line") => Target::Line,
            _ => Target::Secret,
        };
        let mut regexes = Vec::new();
        for r in &raw.regexes {
            match compile(r) {
                Ok(re) => regexes.push(re),
                Err(e) => errors.push(format!("{ctx}: allowlist regex: {e}")),
            }
        }
        let stopwords = if raw.stopwords.is_empty() {
            None
        } else {
            match AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .build(&raw.stopwords)
            {
                Ok(ac) => Some(ac),
                Err(e) => {
                    errors.push(format!("{ctx}: stopwords: {e}"));
                    None
                }
            }
        };
        Some(Self {
            target,
            regexes,
            stopwords,
        })
    }

    /// True when the finding is allowed (not a secret).
    fn allows(&self, secret: &[u8], whole: &[u8], line: &[u8]) -> bool {
        let target = match self.target {
            Target::Secret => secret,
            Target::Match => whole,
            Target::Line => line,
        };
        if self.regexes.iter().any(|re| re.is_match(target)) {
            return true;
        }
        self.stopwords
            .as_ref()
            .is_some_and(|ac| ac.is_match(secret))
    }
}

/// An extra check a rule's candidate must pass (e.g. a checksum).
type Validator = fn(&[u8]) -> bool;

#[derive(Debug)]
struct Rule {
    id: String,
    pattern: String,
    regex: OnceLock<Option<Regex>>,
    secret_group: Option<usize>,
    entropy: Option<f64>,
    generic: bool,
    /// Findings whose value is a placeholder are dropped (rules keyed on a
    /// name rather than a token format: see `context::is_placeholder`).
    placeholder_check: bool,
    multiline: bool,
    allowlists: Vec<Allowlist>,
    validator: Option<Validator>,
    /// One of chokepoint's own rules (not from gitleaks).
    extra: bool,
}

impl Rule {
    fn regex(&self) -> Option<&Regex> {
        self.regex
            .get_or_init(|| compile(&self.pattern).ok())
            .as_ref()
    }
}

fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    let pattern = &go_braces(pattern);
    // ASCII classes first: much smaller automata; fall back to Unicode for
    // the odd pattern that needs it.
    RegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(DFA_SIZE_LIMIT)
        .build()
        .or_else(|_| {
            RegexBuilder::new(pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .dfa_size_limit(DFA_SIZE_LIMIT)
                .build()
        })
}

/// Go's RE2 reads a `{` that does not start a valid repetition as a
/// literal; Rust's `regex` rejects it. Escape such braces (outside classes).
fn go_braces(pattern: &str) -> String {
    let b = pattern.as_bytes();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut in_class = false;
    let mut chars = pattern.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                out.push(c);
                if let Some((_, n)) = chars.next() {
                    out.push(n);
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push(c);
                // A leading `]` or `^]` is a literal inside the class.
                if let Some(&(_, '^')) = chars.peek() {
                    out.push('^');
                    chars.next();
                }
                if let Some(&(_, ']')) = chars.peek() {
                    out.push(']');
                    chars.next();
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            '{' if !in_class && !is_repetition(b.get(i + 1..).unwrap_or_default()) => {
                out.push_str("\\{");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Does `rest` (the text after a `{`) read `n}`, `n,}` or `n,m}`?
fn is_repetition(rest: &[u8]) -> bool {
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return false;
    }
    let rest = rest.get(digits..).unwrap_or_default();
    match rest.first() {
        Some(b'}') => true,
        Some(b',') => {
            let rest = rest.get(1..).unwrap_or_default();
            let d2 = rest.iter().take_while(|c| c.is_ascii_digit()).count();
            rest.get(d2) == Some(&b'}')
        }
        _ => false,
    }
}

/// A rule chokepoint adds to gitleaks' set.
struct Extra {
    id: &'static str,
    pattern: &'static str,
    /// Empty: the rule runs where `trigger` says (or on the whole text).
    keywords: &'static [&'static str],
    entropy: Option<f64>,
    validator: Option<Validator>,
}

fn valid_handle(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_ok_and(handle::is_valid)
}

fn basic_credentials(b: &[u8]) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b)
        .is_ok_and(|d| d.contains(&b':') && d.iter().all(|c| (0x20..0x7f).contains(c)))
}

fn valid_jwt(b: &[u8]) -> bool {
    use base64::Engine as _;
    let header = b.split(|&c| c == b'.').next().unwrap_or_default();
    let header: Vec<u8> = header.iter().copied().filter(|&c| c != b'=').collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&header)
        .ok()
        .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
        .is_some_and(|v| v.is_object())
}

/// A prefixed token whose body is a placeholder (`…-AccessTokenHere`,
/// `xxxx`) is an example, not a secret.
fn not_placeholder(b: &[u8]) -> bool {
    !context::is_placeholder(b)
}

/// Validators attached to gitleaks rules by id.
const GITLEAKS_VALIDATORS: &[(&str, Validator)] = &[];

/// Rules with no keyword run over the whole text; keep them few and cheap.
const EXTRAS: &[Extra] = &[
    Extra {
        id: "npm-auth-token",
        pattern: r#"(?i)\b_auth(?:token)?\s*=\s*["']?([^\s$'"{}]{8,})"#,
        keywords: &["_auth"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "pypi-upload-token",
        pattern: r"\b(pypi-AgE[A-Za-z0-9_-]{50,})",
        keywords: &["pypi-"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "telegram-bot-api-token",
        pattern: r"\b([0-9]{5,16}:AA[A-Za-z0-9_-]{32,33})\b",
        keywords: &[":aa"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "square-secret",
        pattern: r"\b(sq0csp-[0-9A-Za-z_-]{43})\b",
        keywords: &["sq0csp-"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "jwt",
        pattern: r"\b(ey[A-Za-z0-9_-]{10,}={0,2}\.ey[A-Za-z0-9_-]{10,}={0,2})",
        keywords: &["eyj"],
        entropy: Some(3.0),
        validator: Some(valid_jwt),
    },
    Extra {
        id: "discord-bot-token",
        // No literal to key on: found by `discord_trigger` (`.xxxxxx.`).
        pattern: r"([MNO][A-Za-z0-9_-]{23,25}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,38})",
        keywords: &[],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "mailchimp-api-key",
        pattern: r"\b([0-9a-f]{32}-us[0-9]{1,2})\b",
        keywords: &["-us"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "gitlab-token",
        pattern: r"\b(gl(?:pat|dt|rt|cbt|ptt|imt|agent|oas|ft|soat|ffct)-[0-9A-Za-z_-]{20,})",
        keywords: &[
            "glpat-", "gldt-", "glrt-", "glcbt-", "glptt-", "glimt-", "glagent-", "gloas-",
            "glft-", "glsoat-", "glffct-",
        ],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "chokepoint-handle",
        pattern: r"\b(cph_[0-9A-Za-z]{49})\b",
        keywords: &["cph_"],
        entropy: None,
        validator: Some(valid_handle),
    },
    Extra {
        id: "openai-api-key",
        pattern: r"\b(sk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{20,}|sk-[A-Za-z0-9]{32,})",
        keywords: &["sk-"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "openrouter-api-key",
        pattern: r"\b(sk-or-v1-[A-Za-z0-9]{32,})",
        keywords: &["sk-or-"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "groq-api-key",
        pattern: r"\b(gsk_[A-Za-z0-9]{40,})",
        keywords: &["gsk_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "xai-api-key",
        pattern: r"\b(xai-[A-Za-z0-9]{48,})",
        keywords: &["xai-"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "google-oauth-access-token",
        pattern: r"\b(ya29\.[0-9A-Za-z_-]{20,})",
        keywords: &["ya29."],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "github-token",
        pattern: r"\b((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{60,255})",
        keywords: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "aws-secret-access-key",
        pattern: r#"(?i)aws.{0,20}?(?:secret|sk).{0,20}?['"\s:=]{1,5}([A-Za-z0-9/+=]{40})\b"#,
        keywords: &["aws"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "authorization-header",
        pattern: r#"(?i)\b(?:proxy-)?authorization["']?\s*[:=]\s*["']?(?:bearer|token|digest|apikey|key|sso-key)\s+([A-Za-z0-9._~+/=:,-]{8,})"#,
        keywords: &["authorization"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "authorization-header",
        pattern: r#"(?i)\b(?:proxy-)?authorization["']?\s*[:=]\s*["']?basic\s+([A-Za-z0-9+/]{4,}={0,2})"#,
        keywords: &["authorization"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "bearer-token",
        pattern: r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{16,}=*)",
        keywords: &["bearer"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "basic-auth",
        pattern: r"\b[Bb]asic\s+([A-Za-z0-9+/]{8,}={0,2})",
        keywords: &["basic"],
        entropy: None,
        validator: Some(basic_credentials),
    },
    Extra {
        id: "url-userinfo-password",
        pattern: r#"(?i)\b[a-z][a-z0-9+.-]{1,20}://[^\s:@/?#\[\]"'`<>;]{0,128}:([^\s@/?#\[\]"'`<>;]{1,256})@"#,
        keywords: &["://"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "nuget-api-key",
        pattern: r"\b(oy2[a-z0-9]{43})\b",
        keywords: &["oy2"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "adafruit-io-key",
        pattern: r"\b(aio_[A-Za-z0-9]{28})\b",
        keywords: &["aio_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "apify-api-token",
        pattern: r"\b(apify_api_[A-Za-z0-9]{36})\b",
        keywords: &["apify_api_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "slack-rotating-token",
        pattern: r"\b(xoxe\.xox[a-z]-[0-9]-[A-Za-z0-9-]{20,}|xoxe-[0-9]-[A-Za-z0-9-]{20,})",
        keywords: &["xoxe"],
        entropy: Some(3.0),
        validator: Some(not_placeholder),
    },
    Extra {
        id: "notion-legacy-token",
        pattern: r"\b(secret_[A-Za-z0-9]{43})\b",
        keywords: &["secret_"],
        entropy: Some(3.5),
        validator: None,
    },
    Extra {
        id: "supabase-token",
        pattern: r"\b(sbp_[a-f0-9]{40}|sb_secret_[A-Za-z0-9_-]{20,})",
        keywords: &["sbp_", "sb_secret_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "replicate-api-token",
        pattern: r"\b(r8_[A-Za-z0-9]{37})\b",
        keywords: &["r8_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "langsmith-api-key",
        pattern: r"\b(lsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10})\b",
        keywords: &["lsv2_"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "pinecone-api-key",
        pattern: r"\b(pcsk_[A-Za-z0-9]{4,8}_[A-Za-z0-9]{40,})",
        keywords: &["pcsk_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "tavily-api-key",
        pattern: r"\b(tvly-(?:dev-|prod-)?[A-Za-z0-9]{32})\b",
        keywords: &["tvly-"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "firecrawl-api-key",
        pattern: r"\b(fc-[a-f0-9]{32})\b",
        keywords: &["fc-"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "elevenlabs-api-key",
        pattern: r"\b(sk_[a-f0-9]{48})\b",
        keywords: &["sk_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "fireworks-api-key",
        pattern: r"\b(fw_[A-Za-z0-9]{24,})\b",
        keywords: &["fw_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "stripe-webhook-secret",
        pattern: r"\b(whsec_[A-Za-z0-9+/]{32,})",
        keywords: &["whsec_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "buildkite-api-token",
        pattern: r"\b(bkua_[a-f0-9]{40})\b",
        keywords: &["bkua_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "circleci-api-token",
        pattern: r"\b(CCIPAT_[A-Za-z0-9]{20,}_[a-f0-9]{40})\b",
        keywords: &["ccipat_"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "render-api-key",
        pattern: r"\b(rnd_[A-Za-z0-9]{32})\b",
        keywords: &["rnd_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "netlify-pat",
        pattern: r"\b(nfp_[A-Za-z0-9]{36,40})\b",
        keywords: &["nfp_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "docker-hub-token",
        pattern: r"\b(dckr_(?:pat|oat)_[A-Za-z0-9_-]{27,})",
        keywords: &["dckr_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "figma-pat",
        pattern: r"\b(figd_[A-Za-z0-9_-]{40,})",
        keywords: &["figd_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "sonar-token",
        pattern: r"\b(sq[pua]_[a-f0-9]{40})\b",
        keywords: &["sqp_", "squ_", "sqa_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "dbt-cloud-token",
        pattern: r"\b(dbt[cu]_[A-Za-z0-9_-]{40,})",
        keywords: &["dbtc_", "dbtu_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "neon-api-key",
        pattern: r"\b(napi_[a-z0-9]{64})\b",
        keywords: &["napi_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "hubspot-pat",
        pattern: r"\b(pat-(?:na|eu)[0-9]-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12})\b",
        keywords: &["pat-na", "pat-eu"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "clickup-api-token",
        pattern: r"\b(pk_[0-9]{6,10}_[A-Z0-9]{32})\b",
        keywords: &["pk_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "contentful-pat",
        pattern: r"\b(CFPAT-[A-Za-z0-9_-]{43})",
        keywords: &["cfpat-"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "brevo-smtp-key",
        pattern: r"\b(xsmtpsib-[a-f0-9]{64}-[A-Za-z0-9]{16})\b",
        keywords: &["xsmtpsib-"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "braintree-access-token",
        pattern: r"\b(access_token\$(?:production|sandbox)\$[a-z0-9]{16}\$[a-f0-9]{32})\b",
        keywords: &["access_token$"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "twitter-bearer-token",
        pattern: r"\b(A{20,24}[A-Za-z0-9%]{30,})",
        keywords: &["aaaaaaaaaaaaaaaaaaaa"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "google-oauth-refresh-token",
        pattern: r"\b(1//0[A-Za-z0-9_-]{40,})",
        keywords: &["1//0"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "google-oauth-client-secret",
        pattern: r"\b(GOCSPX-[A-Za-z0-9_-]{28})",
        keywords: &["gocspx-"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "dropbox-oauth-token",
        pattern: r"\b(sl\.(?:u\.)?[A-Za-z0-9_-]{130,})",
        keywords: &["sl."],
        entropy: Some(3.5),
        validator: None,
    },
    Extra {
        id: "zoho-oauth-token",
        pattern: r"\b(1000\.[a-f0-9]{32}\.[a-f0-9]{32})\b",
        keywords: &["1000."],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "mapbox-secret-token",
        pattern: r"\b(sk\.eyJ[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,})",
        keywords: &["sk.eyj"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "intercom-access-token",
        pattern: r"\b(dG9rO[A-Za-z0-9+/]{40,}={0,2})",
        keywords: &["dg9ro"],
        entropy: Some(3.5),
        validator: None,
    },
    Extra {
        id: "azure-identifiable-key",
        pattern: r"\b([A-Za-z0-9]{52}JQQJ9[A-Za-z0-9]{27,31})\b",
        keywords: &["jqqj9"],
        entropy: Some(3.5),
        validator: None,
    },
    Extra {
        id: "azure-identifiable-key",
        pattern: r"([A-Za-z0-9+/]{70,80}(?:\+ASt|\+ACR|AzFu|ACDb|\+AEh|\+ASb|\+ARm|APIM|AzSe|AzCa|AIoT)[A-Za-z0-9+/]{4,8}={0,2})",
        keywords: &[
            "+ast", "+acr", "azfu", "acdb", "+aeh", "+asb", "+arm", "apim", "azse", "azca", "aiot",
        ],
        entropy: Some(4.0),
        validator: None,
    },
    Extra {
        id: "discord-webhook-url",
        pattern: r"(?i)discord(?:app)?\.com/api/(?:v[0-9]+/)?webhooks/[0-9]{17,20}/([A-Za-z0-9_-]{60,})",
        keywords: &["/webhooks/"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "webhook-url-secret",
        pattern: r"/hooks/(?:catch/[0-9]+/)?([A-Za-z0-9]{6,}(?:/[A-Za-z0-9_-]{6,})?)",
        keywords: &["/hooks/"],
        entropy: Some(2.0),
        validator: None,
    },
    Extra {
        id: "ifttt-webhook-key",
        pattern: r"maker\.ifttt\.com/trigger/[^/\s]+/with/key/([A-Za-z0-9_-]{20,})",
        keywords: &["ifttt.com"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "linear-oauth-token",
        pattern: r"\b(lin_oauth_[a-f0-9]{64})\b",
        keywords: &["lin_oauth_"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "trello-token",
        pattern: r"\b(ATTA[A-Za-z0-9]{60,})\b",
        keywords: &["atta"],
        entropy: Some(3.5),
        validator: None,
    },
    Extra {
        id: "bitbucket-app-password",
        pattern: r"\b(ATBB[A-Za-z0-9_=.-]{28,})",
        keywords: &["atbb"],
        entropy: Some(3.5),
        validator: None,
    },
    Extra {
        id: "atlassian-admin-token",
        pattern: r"\b(ATCTT3xFfGN0[A-Za-z0-9_=-]{100,})",
        keywords: &["atctt3xffgn0"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "akamai-edgegrid-token",
        pattern: r"\b(akab-[a-z0-9]{16}-[a-z0-9]{16})\b",
        keywords: &["akab-"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "plaid-access-token",
        pattern: r"\b(access-(?:sandbox|development|production)-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12})\b",
        keywords: &[
            "access-sandbox-",
            "access-development-",
            "access-production-",
        ],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "launchdarkly-key",
        pattern: r"\b((?:sdk|api)-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12})\b",
        keywords: &["sdk-", "api-"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "firebase-cloud-messaging-key",
        pattern: r"\b(AAAA[A-Za-z0-9_-]{7}:APA91b[A-Za-z0-9_-]{100,})",
        keywords: &[":apa91b"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "stytch-secret",
        pattern: r"\b(secret-(?:live|test)-[A-Za-z0-9_=-]{30,})",
        keywords: &["secret-live-", "secret-test-"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "resend-api-key",
        pattern: r"\b(re_[A-Za-z0-9]{8}_[A-Za-z0-9]{24})\b",
        keywords: &["re_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "posthog-personal-api-key",
        pattern: r"\b(phx_[A-Za-z0-9]{40,})",
        keywords: &["phx_"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "tailscale-key",
        pattern: r"\b(tskey-(?:api|auth|client|webhook|scim)-[A-Za-z0-9]{6,}-[A-Za-z0-9]{20,})",
        keywords: &["tskey-"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "perplexity-api-key",
        pattern: r"\b(pplx-[A-Za-z0-9]{48})\b",
        keywords: &["pplx-"],
        entropy: Some(3.0),
        validator: None,
    },
    Extra {
        id: "microsoft-teams-webhook",
        pattern: r"webhook\.office\.com/webhookb2/[a-f0-9-]{36}@[a-f0-9-]{36}/IncomingWebhook/([a-f0-9]{32}/[a-f0-9-]{36}(?:/[A-Za-z0-9_-]{20,})?)",
        keywords: &["incomingwebhook/"],
        entropy: None,
        validator: None,
    },
    Extra {
        id: "url-query-secret",
        pattern: r#"(?i)[?&;](?:access_?token|api[_-]?key|apikey|auth_?token|token|client_secret|secret|password|passwd|pwd|private_token|refresh_token|id_token|key|sig|signature)=([^&#\s"'<>\[\]]{6,})"#,
        keywords: &[
            "token=",
            "key=",
            "secret=",
            "password=",
            "passwd=",
            "pwd=",
            "sig=",
            "signature=",
        ],
        // Placeholders such as `ACCESS_TOKEN` have no digit: see `needs_digit`.
        entropy: Some(2.5),
        validator: None,
    },
];

/// The compiled rule set. Build once ([`RuleSet::default_shared`]) and share.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    keywords: Option<AhoCorasick>,
    /// keyword pattern index → rules to run.
    keyword_rules: Vec<Vec<usize>>,
    /// Rules without keywords, run over the whole text.
    always: Vec<usize>,
    global_allow: Option<Allowlist>,
    errors: Vec<String>,
}

impl RuleSet {
    /// Build the default set from the embedded gitleaks file plus chokepoint's
    /// rules. Never fails: a rule that cannot be parsed is skipped and listed
    /// in [`RuleSet::errors`] (a test asserts the list is empty).
    #[must_use]
    pub fn build_default() -> Self {
        let mut errors = Vec::new();
        let raw: RawConfig = match toml::from_str(GITLEAKS_TOML) {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("gitleaks.toml: {e}"));
                RawConfig {
                    allowlist: None,
                    rules: Vec::new(),
                }
            }
        };
        let mut rules = Vec::new();
        let mut kw_list: Vec<(String, usize)> = Vec::new();
        let mut always: Vec<usize> = Vec::new();
        for r in &raw.rules {
            let Some(pattern) = r.regex.as_ref().filter(|p| !p.is_empty()) else {
                continue; // path-only rule (e.g. pkcs12-file): nothing to scan
            };
            if r.path.is_some() {
                continue; // rule bound to a file type we never see
            }
            if r.keywords.is_empty() {
                errors.push(format!("{}: rule has no keywords", r.id));
                continue;
            }
            // gitleaks ends most token rules with a terminator built for
            // source files; output text also ends tokens with `&`, `,`, `)`…
            // (`?access_token=…&x=1`, prose). Widen it.
            let pattern = &pattern.replace(GITLEAKS_TERMINATOR, WIDER_TERMINATOR);
            let idx = rules.len();
            let allowlists = r
                .allowlists
                .iter()
                .filter_map(|a| Allowlist::build(a, &mut errors, &r.id))
                .collect();
            rules.push(Rule {
                id: r.id.clone(),
                pattern: pattern.clone(),
                regex: OnceLock::new(),
                secret_group: r.secret_group,
                entropy: r.entropy.filter(|e| *e > 0.0),
                generic: r.id.starts_with("generic"),
                placeholder_check: r.id.starts_with("generic") || r.id.starts_with("curl-auth"),
                multiline: is_multiline(pattern),
                allowlists,
                validator: GITLEAKS_VALIDATORS
                    .iter()
                    .find(|(id, _)| *id == r.id)
                    .map(|(_, v)| *v),
                extra: false,
            });
            for k in &r.keywords {
                kw_list.push((k.to_ascii_lowercase(), idx));
            }
        }
        for x in EXTRAS {
            let idx = rules.len();
            rules.push(Rule {
                id: x.id.to_owned(),
                pattern: x.pattern.to_owned(),
                regex: OnceLock::new(),
                secret_group: None,
                entropy: x.entropy,
                // Like gitleaks' generic rule: a value without a digit is a
                // placeholder (`?access_token=ACCESS_TOKEN`), not a secret.
                generic: x.id == "url-query-secret",
                placeholder_check: x.id == "url-query-secret",
                multiline: false,
                allowlists: Vec::new(),
                validator: x.validator,
                extra: true,
            });
            if x.keywords.is_empty() {
                always.push(idx);
            }
            for k in x.keywords {
                kw_list.push(((*k).to_ascii_lowercase(), idx));
            }
        }
        // The context rule (see `context`) shares the automaton.
        for k in context::KEYWORDS {
            kw_list.push(((*k).to_owned(), CONTEXT_RULE));
        }
        // Deduplicate keywords: one automaton pattern per distinct keyword.
        kw_list.sort();
        let mut patterns: Vec<String> = Vec::new();
        let mut keyword_rules: Vec<Vec<usize>> = Vec::new();
        for (k, idx) in kw_list {
            if patterns.last() == Some(&k) {
                if let Some(list) = keyword_rules.last_mut() {
                    if !list.contains(&idx) {
                        list.push(idx);
                    }
                }
            } else {
                patterns.push(k);
                keyword_rules.push(vec![idx]);
            }
        }
        let keywords = match AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&patterns)
        {
            Ok(ac) => Some(ac),
            Err(e) => {
                // Visible to tests through `errors()`. Without the automaton
                // only live values are scrubbed.
                errors.push(format!("keyword automaton: {e}"));
                None
            }
        };
        let global_allow = raw
            .allowlist
            .as_ref()
            .and_then(|a| Allowlist::build(a, &mut errors, "global"));
        Self {
            rules,
            keywords,
            keyword_rules,
            always,
            global_allow,
            errors,
        }
    }

    /// The process-wide default rule set, built on first use.
    pub fn default_shared() -> &'static Self {
        static SET: OnceLock<RuleSet> = OnceLock::new();
        SET.get_or_init(Self::build_default)
    }

    /// Problems met while building (empty for the embedded set).
    #[must_use]
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// Number of active rules.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when no rule is active.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Compile every rule's regex now (they are otherwise compiled on the
    /// first keyword hit). Returns `(rule id, error)` for each failure.
    #[must_use]
    pub fn compile_all(&self) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        for r in &self.rules {
            if r.regex().is_none() {
                let msg = compile(&r.pattern)
                    .err()
                    .map_or_else(String::new, |e| e.to_string());
                failed.push((r.id.clone(), msg));
            }
        }
        failed
    }

    /// Append every finding in `text` to `out` (unsorted, may overlap).
    pub(crate) fn find(&'static self, text: &str, out: &mut Vec<Span>) {
        let bytes = text.as_bytes();
        // Per rule: keyword-hit windows.
        let mut windows: Vec<(usize, usize, usize)> = Vec::new(); // (rule, start, end)
        for &ri in &self.always {
            if self
                .rules
                .get(ri)
                .is_some_and(|r| r.id == "discord-bot-token")
            {
                discord_trigger(bytes, ri, &mut windows);
            } else {
                windows.push((ri, 0, bytes.len()));
            }
        }
        let Some(keywords) = &self.keywords else {
            return;
        };
        let mut context_seen = 0usize;
        for m in keywords.find_overlapping_iter(bytes) {
            let Some(rule_ids) = self.keyword_rules.get(m.pattern().as_usize()) else {
                continue;
            };
            for &ri in rule_ids {
                if ri == CONTEXT_RULE {
                    context::scan(bytes, m.start(), m.end(), &mut context_seen, out);
                    continue;
                }
                let Some(rule) = self.rules.get(ri) else {
                    continue;
                };
                if rule.generic && !rule.extra && !assignment_follows(bytes, m.end()) {
                    continue;
                }
                let (s, e) = window(bytes, m.start(), m.end(), rule.multiline);
                windows.push((ri, s, e));
            }
        }
        if windows.is_empty() {
            return;
        }
        windows.sort_unstable();
        let mut i = 0;
        while let Some(&(ri, s, mut e)) = windows.get(i) {
            i += 1;
            while let Some(&(rj, s2, e2)) = windows.get(i) {
                if rj != ri || s2 > e {
                    break;
                }
                e = e.max(e2);
                i += 1;
            }
            if let Some(rule) = self.rules.get(ri) {
                self.run_rule(rule, bytes, s, e, out);
            }
        }
    }

    fn run_rule(
        &'static self,
        rule: &'static Rule,
        text: &[u8],
        start: usize,
        end: usize,
        out: &mut Vec<Span>,
    ) {
        let Some(re) = rule.regex() else {
            return;
        };
        let Some(hay) = text.get(start..end) else {
            return;
        };
        for caps in re.captures_iter(hay) {
            let Some(whole) = caps.get(0) else {
                continue;
            };
            if whole.is_empty() {
                continue;
            }
            // gitleaks: the secret is `secretGroup`, else the first
            // non-empty capture group, else the whole match.
            let secret = match rule.secret_group {
                Some(g) => caps.get(g),
                None => caps.iter().skip(1).flatten().find(|m| !m.is_empty()),
            }
            .unwrap_or(whole);
            let sec = secret.as_bytes();
            if let Some(min) = rule.entropy {
                if shannon_entropy(sec) <= min {
                    continue;
                }
                if rule.generic && !sec.iter().any(u8::is_ascii_digit) {
                    continue;
                }
            }
            // Generic rules (a name, then any token): placeholders, sequences
            // and values cut short with `...` are not secrets.
            if rule.placeholder_check && context::is_placeholder(sec) {
                continue;
            }
            // gitleaks' generic rule keys on a word anywhere in a name; the
            // rest of the name can say it is no secret (`next_page_token`).
            if rule.generic && !rule.extra {
                let before = hay.get(whole.start()..secret.start()).unwrap_or_default();
                if context::key_says_not_secret(before) {
                    continue;
                }
            }
            if let Some(v) = rule.validator {
                if !v(sec) {
                    continue;
                }
            }
            let abs_start = start + whole.start();
            let abs_end = start + whole.end();
            let line = line_of(text, abs_start, abs_end);
            let allowed = self
                .global_allow
                .iter()
                .chain(rule.allowlists.iter())
                .any(|a| a.allows(sec, whole.as_bytes(), line));
            if allowed {
                continue;
            }
            out.push(Span {
                start: start + secret.start(),
                end: start + secret.end(),
                label: rule.id.as_str(),
            });
        }
    }
}

/// Prefilter for gitleaks' generic-api-key, whose regex reads
/// `KEYWORD(?:[ \t\w.-]{0,20})[\s'"]{0,3}(?:=|>|:{1,3}=|\|\||:|=>|\?=|,)`:
/// unless an assignment operator can follow the keyword ending at `end`
/// that way, this hit cannot start a match (every keyword occurrence is a
/// hit of its own, so skipping this one loses nothing).
fn assignment_follows(text: &[u8], end: usize) -> bool {
    let class1 = |b: u8| {
        b == b' ' || b == b'\t' || b == b'.' || b == b'-' || b == b'_' || b.is_ascii_alphanumeric()
    };
    let class2 = |b: u8| b.is_ascii_whitespace() || b == 0x0B || b == b'\'' || b == b'"';
    let is_op = |b: u8| matches!(b, b'=' | b'>' | b':' | b'|' | b'?' | b',');
    for k in 0..=20usize {
        let at = end + k;
        if k > 0 && !text.get(at - 1).copied().is_some_and(class1) {
            break;
        }
        for j in 0..=3usize {
            if j > 0 && !text.get(at + j - 1).copied().is_some_and(class2) {
                break;
            }
            if text.get(at + j).copied().is_some_and(is_op) {
                return true;
            }
        }
    }
    false
}

/// Windows for the Discord bot-token rule: around each `.xxxxxx.` (six
/// token characters between two dots), found with memchr.
fn discord_trigger(text: &[u8], rule: usize, out: &mut Vec<(usize, usize, usize)>) {
    let tok = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-';
    for dot in memchr::memchr_iter(b'.', text) {
        if text.get(dot + 7) != Some(&b'.') {
            continue;
        }
        if !text
            .get(dot + 1..dot + 7)
            .is_some_and(|mid| mid.iter().all(tok))
        {
            continue;
        }
        out.push((rule, dot.saturating_sub(26), (dot + 8 + 38).min(text.len())));
    }
}

/// Can the pattern match across a line end?
fn is_multiline(pattern: &str) -> bool {
    ["(?s", r"[\s\S", r"\n", r"\r"]
        .iter()
        .any(|needle| pattern.contains(needle))
}

/// Shannon entropy in bits per byte (gitleaks' measure).
pub(crate) fn shannon_entropy(data: &[u8]) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in data {
        if let Some(c) = counts.get_mut(usize::from(b)) {
            *c += 1;
        }
    }
    let len = data.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum()
}

/// The window a rule's regex runs on around a keyword hit at `ks..ke`: the
/// line around it, capped to a few hundred bytes each side (multi-line rules
/// get a larger right side and ignore line ends).
fn window(text: &[u8], ks: usize, ke: usize, multiline: bool) -> (usize, usize) {
    let lo = ks.saturating_sub(WINDOW_LEFT);
    let right = if multiline {
        WINDOW_RIGHT_MULTILINE
    } else {
        WINDOW_RIGHT
    };
    let hi = ke.saturating_add(right).min(text.len());
    if multiline {
        return (lo, hi);
    }
    let start = text
        .get(lo..ks)
        .and_then(|s| s.iter().rposition(|&b| b == b'\n'))
        .map_or(lo, |p| lo + p + 1);
    let end = text
        .get(ke..hi)
        .and_then(|s| s.iter().position(|&b| b == b'\n'))
        .map_or(hi, |p| ke + p);
    (start, end)
}

/// The line(s) containing `s..e`, capped to [`LINE_CAP`] bytes each side.
fn line_of(text: &[u8], s: usize, e: usize) -> &[u8] {
    let lo = s.saturating_sub(LINE_CAP);
    let hi = e.saturating_add(LINE_CAP).min(text.len());
    let start = text
        .get(lo..s)
        .and_then(|t| t.iter().rposition(|&b| b == b'\n'))
        .map_or(lo, |p| lo + p + 1);
    let end = text
        .get(e..hi)
        .and_then(|t| t.iter().position(|&b| b == b'\n'))
        .map_or(hi, |p| e + p);
    text.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pathological_patterns_are_refused_not_built() {
        // Compiles to far more than the 2 MiB program limit.
        assert!(compile(r"(?:\w{1000}){1000}").is_err());
        assert!(compile(r"[a-z]{3}\dQ~").is_ok());
    }

    #[test]
    fn go_braces_are_escaped() {
        assert_eq!(go_braces(r"^\${(?:[A-Z_]+)}$"), r"^\$\{(?:[A-Z_]+)}$");
        assert_eq!(go_braces(r"a{2,3}b{4}c{5,}"), r"a{2,3}b{4}c{5,}");
        assert_eq!(go_braces(r"[{]{{x"), r"[{]\{\{x");
    }

    #[test]
    fn assignment_prefilter_matches_the_regex_shape() {
        let t = b"api_key = 'x'";
        assert!(assignment_follows(t, 3)); // after "api"
        assert!(assignment_follows(b"token\"  : 1", 5));
        assert!(!assignment_follows(b"token\"   : 1", 5)); // 4 > [\s'\"]{0,3}
        assert!(!assignment_follows(
            b"authenticated via session cookie\",",
            4
        ));
        assert!(!assignment_follows(b"/api/v1/users", 4));
    }

    #[test]
    fn entropy() {
        assert!(shannon_entropy(b"aaaa") < 0.01);
        assert!((shannon_entropy(b"abcd") - 2.0).abs() < 1e-9);
        assert!(shannon_entropy(b"") < 0.01);
    }
}
