//! A strict fake OAuth token endpoint (RFC 6749 §6), behaving like the
//! strictest real providers: every refresh rotates the refresh token;
//! presenting a consumed one revokes the whole family (every token issued
//! from the same grant) — unless it comes within the configured reuse
//! window after its rotation (Auth0's "reuse interval", Okta's "grace
//! period"), in which case the same new pair is answered again. Every call
//! is recorded for a history checker.
//!
//! This is the endpoint's logic; tests call it in-process or serve it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The refresh token presented.
    pub presented: String,
    /// What happened.
    pub result: CallResult,
}

/// The endpoint's answer to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// Rotated: (access token, new refresh token).
    Rotated(String, String),
    /// A reuse within the window: the same pair answered again.
    Replayed(String, String),
    /// `invalid_grant`: unknown token, revoked family, or a reuse (which
    /// revoked the family).
    InvalidGrant,
}

struct Token {
    family: u64,
    consumed: Option<(Instant, String, String)>,
}

#[derive(Default)]
struct State {
    tokens: HashMap<String, Token>,
    revoked: Vec<u64>,
    families: u64,
    counter: u64,
    calls: Vec<Call>,
    access: HashMap<String, u64>,
}

/// The endpoint.
pub struct StrictEndpoint {
    state: Mutex<State>,
    reuse_window: Duration,
}

impl Default for StrictEndpoint {
    fn default() -> Self {
        Self::new(Duration::ZERO)
    }
}

impl StrictEndpoint {
    /// An endpoint with this reuse window (zero: strict, any reuse revokes).
    pub fn new(reuse_window: Duration) -> StrictEndpoint {
        StrictEndpoint {
            state: Mutex::new(State::default()),
            reuse_window,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start a family (an authorization grant); its first refresh token.
    pub fn grant(&self) -> String {
        let mut s = self.lock();
        s.families += 1;
        s.counter += 1;
        let fam = s.families;
        let t = format!("rt-{fam}-{}", s.counter);
        s.tokens.insert(
            t.clone(),
            Token {
                family: fam,
                consumed: None,
            },
        );
        t
    }

    /// `grant_type=refresh_token` with `presented`.
    pub fn refresh(&self, presented: &str) -> CallResult {
        let mut s = self.lock();
        let window = self.reuse_window;
        let result = match s
            .tokens
            .get(presented)
            .map(|t| (t.family, t.consumed.clone()))
        {
            None => CallResult::InvalidGrant,
            Some((fam, _)) if s.revoked.contains(&fam) => CallResult::InvalidGrant,
            Some((fam, Some((at, access, next)))) => {
                if at.elapsed() <= window {
                    CallResult::Replayed(access, next)
                } else {
                    s.revoked.push(fam);
                    CallResult::InvalidGrant
                }
            }
            Some((fam, None)) => {
                s.counter += 1;
                let n = s.counter;
                let access = format!("at-{fam}-{n}");
                let next = format!("rt-{fam}-{n}");
                s.tokens.insert(
                    next.clone(),
                    Token {
                        family: fam,
                        consumed: None,
                    },
                );
                s.access.insert(access.clone(), fam);
                if let Some(t) = s.tokens.get_mut(presented) {
                    t.consumed = Some((Instant::now(), access.clone(), next.clone()));
                }
                CallResult::Rotated(access, next)
            }
        };
        s.calls.push(Call {
            presented: presented.to_owned(),
            result: result.clone(),
        });
        result
    }

    /// Whether `access` is a token issued by a live family.
    pub fn access_valid(&self, access: &str) -> bool {
        let s = self.lock();
        s.access.get(access).is_some_and(|f| !s.revoked.contains(f))
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Families revoked so far.
    pub fn revoked_families(&self) -> usize {
        self.lock().revoked.len()
    }
}
