//! The history checker of the refresh fault test (issue #15, "Proof"): a
//! pure function over what happened, that says whether the credentials
//! survived.
//!
//! Input ([`History`]): the strict token endpoint's record of every call
//! ([`Call`], in the order the endpoint answered them), the grants the test
//! made (credential → its first refresh and access tokens), the store at the
//! end (each credential's refresh and access token, opened with the master
//! key, and its status; every orphan's refresh token), and the request log
//! (which access token the integration saw on each request, whether the
//! request succeeded) with the replicas' outages (killed or paused).
//!
//! Rules ([`check`] returns every violation, never stops at the first):
//! 1. no refresh token is presented twice. A second presentation the
//!    provider answered inside its reuse window ([`CallResult::Replayed`])
//!    is counted apart ([`Report::replays_in_window`]): the strict
//!    wording forbids it, the provider's documented reuse window allows it
//!    (docs/refresh.md, "What no client-side protocol can do");
//! 2. no family is revoked (no `invalid_grant`), and no token the endpoint
//!    never issued is presented;
//! 3. every provider answer (each refresh token it issued) is either
//!    persisted (the credential's refresh token at the end), or kept in an
//!    orphan for recovery, or superseded (presented again later: a later
//!    rotation of the same family used it);
//! 4. every credential is still `active` at the end;
//! 5. every request that did not overlap an outage of the replica it was
//!    sent to succeeded, with an access token the endpoint issued to that
//!    credential's family (or the grant's first one), of a family that is
//!    not revoked. One exception, counted apart
//!    ([`Report::requests_in_store_outage`]): a request refused with
//!    `dependency_unavailable` while the store itself could not be written
//!    ([`History::store_outages`], measured by the test: SQLite's write
//!    lock held by a stopped process, which stops every replica's
//!    commits). Refusing then is the fail-closed answer: a new access token
//!    may not be used before it is committed.

use std::collections::{HashMap, HashSet};

pub use crate::token_endpoint::{Call, CallResult};

/// One credential as the test created it.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The credential (row id).
    pub credential: String,
    /// Its first refresh token (from [`crate::token_endpoint::StrictEndpoint::grant`]).
    pub refresh_token: String,
    /// Its first access token, if it has one (not issued by the endpoint;
    /// valid until the first refresh).
    pub access_token: Option<String>,
}

/// One credential row at the end, opened with the master key.
#[derive(Debug, Clone)]
pub struct FinalRow {
    /// The credential (row id).
    pub credential: String,
    /// Its refresh token.
    pub refresh_token: String,
    /// Its access token.
    pub access_token: String,
    /// `active` or `needs_reauth`.
    pub status: String,
}

/// One orphan at the end, opened with the master key.
#[derive(Debug, Clone)]
pub struct FinalOrphan {
    /// Its credential.
    pub credential: String,
    /// The refresh token it holds.
    pub refresh_token: String,
}

/// One request of the load.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// The replica it was sent to.
    pub replica: usize,
    /// The credential it used.
    pub credential: String,
    /// When it was sent and when it ended (ms since the test's start).
    pub start_ms: u64,
    /// See `start_ms`.
    pub end_ms: u64,
    /// Whether the worker answered it with the integration's success.
    pub ok: bool,
    /// The worker's reason when it refused the request (`X-Egress-Error`).
    pub reason: Option<String>,
    /// The access token the integration saw, if the request reached it.
    pub access_token: Option<String>,
}

/// A replica out of service (killed until restarted and listening again, or
/// stopped until continued), ms since the test's start.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    /// The replica.
    pub replica: usize,
    /// From.
    pub from_ms: u64,
    /// To.
    pub to_ms: u64,
}

/// Everything the checker looks at.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The credentials the test created.
    pub grants: Vec<Grant>,
    /// The endpoint's calls, in order.
    pub calls: Vec<Call>,
    /// The store's credential rows at the end.
    pub rows: Vec<FinalRow>,
    /// The store's orphans at the end.
    pub orphans: Vec<FinalOrphan>,
    /// The request log.
    pub requests: Vec<RequestRecord>,
    /// The replicas' outages.
    pub outages: Vec<Outage>,
    /// When the store could not be written by any replica, as measured
    /// (`replica` is unused: the store is shared).
    pub store_outages: Vec<Outage>,
}

/// A broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Rule 1: a refresh token presented again outside any reuse window.
    Reused {
        /// The credential.
        credential: String,
        /// The token.
        token: String,
    },
    /// Rule 2: the provider revoked (refused) a credential's family.
    FamilyRevoked {
        /// The credential.
        credential: String,
    },
    /// Rule 2: a token the endpoint never issued was presented.
    UnknownToken {
        /// The token.
        token: String,
    },
    /// Rule 3: a provider answer neither persisted, orphaned nor superseded.
    AnswerLost {
        /// The credential.
        credential: String,
        /// The lost refresh token.
        token: String,
    },
    /// Rule 4: a credential is not active at the end (or has no row).
    NotActive {
        /// The credential.
        credential: String,
        /// Its status (`missing` without a row).
        status: String,
    },
    /// Rule 5: a request outside any outage failed.
    RequestFailed {
        /// The replica.
        replica: usize,
        /// The credential.
        credential: String,
        /// When it was sent.
        start_ms: u64,
    },
    /// Rule 5: a request succeeded with a token that is not a valid access
    /// token of its credential.
    InvalidAccessToken {
        /// The credential.
        credential: String,
        /// What the integration saw (`none` if nothing).
        token: String,
    },
}

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Refresh-token presentations (calls).
    pub presentations: usize,
    /// Rotations (new refresh tokens issued).
    pub rotations: usize,
    /// Presentations of a consumed token inside the reuse window.
    pub replays_in_window: usize,
    /// Answers persisted as the final row.
    pub persisted: usize,
    /// Answers superseded by a later rotation.
    pub superseded: usize,
    /// Answers kept in an orphan at the end (not adopted yet).
    pub in_orphans: usize,
    /// Requests checked (outside every outage of their replica).
    pub requests_checked: usize,
    /// Requests left out (overlapping an outage of their replica).
    pub requests_in_outage: usize,
    /// Requests refused with `dependency_unavailable` during a store outage
    /// (left out of rule 5, see the module's documentation).
    pub requests_in_store_outage: usize,
    /// Families revoked.
    pub families_revoked: usize,
    /// Store outages in the history.
    pub store_outages: usize,
    /// Every broken rule.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Whether no rule is broken.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// A one-line summary (figures, then the first violations).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "presentations={} rotations={} replays_in_window={} persisted={} superseded={} \
             in_orphans={} families_revoked={} requests_checked={} requests_in_outage={} \
             store_outages={} requests_in_store_outage={} violations={}",
            self.presentations,
            self.rotations,
            self.replays_in_window,
            self.persisted,
            self.superseded,
            self.in_orphans,
            self.families_revoked,
            self.requests_checked,
            self.requests_in_outage,
            self.store_outages,
            self.requests_in_store_outage,
            self.violations.len()
        );
        for v in self.violations.iter().take(10) {
            s.push_str(&format!("\n  {v:?}"));
        }
        s
    }
}

/// Check `h` against the rules of the module's documentation.
pub fn check(h: &History) -> Report {
    let mut r = Report::default();
    // Token → family (the credential whose grant it descends from).
    let mut family: HashMap<&str, &str> = HashMap::new();
    let mut access_family: HashMap<&str, &str> = HashMap::new();
    for g in &h.grants {
        family.insert(&g.refresh_token, &g.credential);
        if let Some(a) = &g.access_token {
            access_family.insert(a, &g.credential);
        }
    }
    let mut presented: HashSet<&str> = HashSet::new();
    let mut revoked: HashSet<&str> = HashSet::new();
    // Refresh tokens issued, in order: (credential, token).
    let mut issued: Vec<(&str, &str)> = Vec::new();
    for c in &h.calls {
        r.presentations += 1;
        let fam = family.get(c.presented.as_str()).copied();
        let again = !presented.insert(&c.presented);
        match (&c.result, fam) {
            (_, None) => r.violations.push(Violation::UnknownToken {
                token: c.presented.clone(),
            }),
            (CallResult::Rotated(access, next), Some(f)) => {
                if again {
                    r.violations.push(Violation::Reused {
                        credential: f.to_owned(),
                        token: c.presented.clone(),
                    });
                }
                r.rotations += 1;
                family.insert(next, f);
                access_family.insert(access, f);
                issued.push((f, next));
            }
            (CallResult::Replayed(access, next), Some(f)) => {
                if again {
                    r.replays_in_window += 1;
                } else {
                    // A replay of a token never presented: the record is
                    // inconsistent; count it as a reuse.
                    r.violations.push(Violation::Reused {
                        credential: f.to_owned(),
                        token: c.presented.clone(),
                    });
                }
                if !family.contains_key(next.as_str()) {
                    issued.push((f, next));
                }
                family.insert(next, f);
                access_family.insert(access, f);
            }
            (CallResult::InvalidGrant, Some(f)) => {
                if again {
                    r.violations.push(Violation::Reused {
                        credential: f.to_owned(),
                        token: c.presented.clone(),
                    });
                }
                if revoked.insert(f) {
                    r.violations.push(Violation::FamilyRevoked {
                        credential: f.to_owned(),
                    });
                }
            }
        }
    }
    r.families_revoked = revoked.len();
    // Rule 3: every issued refresh token accounted for.
    let row_of: HashMap<&str, &FinalRow> =
        h.rows.iter().map(|x| (x.credential.as_str(), x)).collect();
    let orphaned: HashSet<(&str, &str)> = h
        .orphans
        .iter()
        .map(|o| (o.credential.as_str(), o.refresh_token.as_str()))
        .collect();
    for (cred, token) in issued {
        if presented.contains(token) {
            r.superseded += 1;
        } else if row_of.get(cred).is_some_and(|x| x.refresh_token == token) {
            r.persisted += 1;
        } else if orphaned.contains(&(cred, token)) {
            r.in_orphans += 1;
        } else {
            r.violations.push(Violation::AnswerLost {
                credential: cred.to_owned(),
                token: token.to_owned(),
            });
        }
    }
    // Rule 4.
    for g in &h.grants {
        match row_of.get(g.credential.as_str()) {
            Some(x) if x.status == "active" => {}
            Some(x) => r.violations.push(Violation::NotActive {
                credential: g.credential.clone(),
                status: x.status.clone(),
            }),
            None => r.violations.push(Violation::NotActive {
                credential: g.credential.clone(),
                status: "missing".to_owned(),
            }),
        }
    }
    // Rule 5.
    r.store_outages = h.store_outages.len();
    for q in &h.requests {
        let in_outage = h
            .outages
            .iter()
            .any(|o| o.replica == q.replica && q.start_ms <= o.to_ms && o.from_ms <= q.end_ms);
        if in_outage {
            r.requests_in_outage += 1;
            continue;
        }
        let refused_store_down = !q.ok
            && q.reason.as_deref() == Some("dependency_unavailable")
            && h.store_outages
                .iter()
                .any(|o| q.start_ms <= o.to_ms && o.from_ms <= q.end_ms);
        if refused_store_down {
            r.requests_in_store_outage += 1;
            continue;
        }
        r.requests_checked += 1;
        if !q.ok {
            r.violations.push(Violation::RequestFailed {
                replica: q.replica,
                credential: q.credential.clone(),
                start_ms: q.start_ms,
            });
            continue;
        }
        let valid = q.access_token.as_deref().is_some_and(|t| {
            access_family.get(t).is_some_and(|f| *f == q.credential)
                && !revoked.contains(q.credential.as_str())
        });
        if !valid {
            r.violations.push(Violation::InvalidAccessToken {
                credential: q.credential.clone(),
                token: q.access_token.clone().unwrap_or_else(|| "none".to_owned()),
            });
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(presented: &str, result: CallResult) -> Call {
        Call {
            presented: presented.to_owned(),
            result,
            at: std::time::Instant::now(),
        }
    }

    fn rotated(a: &str, n: &str) -> CallResult {
        CallResult::Rotated(a.to_owned(), n.to_owned())
    }

    fn replayed(a: &str, n: &str) -> CallResult {
        CallResult::Replayed(a.to_owned(), n.to_owned())
    }

    fn row(cred: &str, rt: &str, at: &str) -> FinalRow {
        FinalRow {
            credential: cred.to_owned(),
            refresh_token: rt.to_owned(),
            access_token: at.to_owned(),
            status: "active".to_owned(),
        }
    }

    fn req(replica: usize, cred: &str, start: u64, ok: bool, at: Option<&str>) -> RequestRecord {
        RequestRecord {
            replica,
            credential: cred.to_owned(),
            start_ms: start,
            end_ms: start + 5,
            ok,
            reason: (!ok).then(|| "dependency_unavailable".to_owned()),
            access_token: at.map(str::to_owned),
        }
    }

    /// A clean history: two credentials, a kill after the answer recovered
    /// by a replay inside the window, an orphan adopted, one pending.
    fn clean() -> History {
        History {
            grants: vec![
                Grant {
                    credential: "c1".into(),
                    refresh_token: "r1-0".into(),
                    access_token: Some("a1-0".into()),
                },
                Grant {
                    credential: "c2".into(),
                    refresh_token: "r2-0".into(),
                    access_token: None,
                },
            ],
            calls: vec![
                call("r1-0", rotated("a1-1", "r1-1")),
                // Replica killed after this answer; the next one re-presents.
                call("r2-0", rotated("a2-1", "r2-1")),
                call("r2-0", replayed("a2-1", "r2-1")),
                call("r1-1", rotated("a1-2", "r1-2")),
                // c2's last answer went to an orphan, not adopted yet.
                call("r2-1", rotated("a2-2", "r2-2")),
            ],
            rows: vec![row("c1", "r1-2", "a1-2"), row("c2", "r2-1", "a2-1")],
            orphans: vec![FinalOrphan {
                credential: "c2".into(),
                refresh_token: "r2-2".into(),
            }],
            requests: vec![
                req(0, "c1", 0, true, Some("a1-0")),
                req(1, "c1", 10, true, Some("a1-1")),
                req(2, "c2", 20, true, Some("a2-1")),
                // Sent to replica 1 while it was down: not checked.
                req(1, "c2", 100, false, None),
                req(0, "c1", 300, true, Some("a1-2")),
            ],
            outages: vec![Outage {
                replica: 1,
                from_ms: 90,
                to_ms: 200,
            }],
            store_outages: Vec::new(),
        }
    }

    #[test]
    fn a_clean_history_passes_and_counts() {
        let r = check(&clean());
        assert!(r.ok(), "{}", r.summary());
        assert_eq!(r.presentations, 5);
        assert_eq!(r.rotations, 4);
        assert_eq!(r.replays_in_window, 1);
        assert_eq!(r.superseded, 2, "{}", r.summary());
        assert_eq!(r.persisted, 1);
        assert_eq!(r.in_orphans, 1);
        assert_eq!(r.requests_checked, 4);
        assert_eq!(r.requests_in_outage, 1);
        assert_eq!(r.families_revoked, 0);
    }

    #[test]
    fn a_reuse_that_revoked_the_family_fails() {
        let mut h = clean();
        // The strict provider: re-presenting r1-0 revokes c1's family.
        h.calls.insert(1, call("r1-0", CallResult::InvalidGrant));
        let r = check(&h);
        assert!(r.violations.contains(&Violation::Reused {
            credential: "c1".into(),
            token: "r1-0".into()
        }));
        assert!(r.violations.contains(&Violation::FamilyRevoked {
            credential: "c1".into()
        }));
        assert_eq!(r.families_revoked, 1);
        // Requests with c1's tokens are no longer valid.
        assert!(r.violations.iter().any(
            |v| matches!(v, Violation::InvalidAccessToken { credential, .. } if credential == "c1")
        ));
    }

    #[test]
    fn a_token_presented_twice_and_rotated_twice_fails() {
        let mut h = clean();
        h.calls.push(call("r1-2", rotated("a1-3", "r1-3")));
        h.calls.push(call("r1-2", rotated("a1-4", "r1-4")));
        h.rows[0] = row("c1", "r1-4", "a1-4");
        let r = check(&h);
        assert!(r.violations.contains(&Violation::Reused {
            credential: "c1".into(),
            token: "r1-2".into()
        }));
    }

    #[test]
    fn a_revoked_family_fails_even_without_a_visible_reuse() {
        let mut h = clean();
        h.calls.push(call("r1-2", CallResult::InvalidGrant));
        let r = check(&h);
        assert!(r.violations.contains(&Violation::FamilyRevoked {
            credential: "c1".into()
        }));
    }

    #[test]
    fn an_unknown_token_fails() {
        let mut h = clean();
        h.calls.push(call("r9-9", CallResult::InvalidGrant));
        let r = check(&h);
        assert_eq!(
            r.violations,
            vec![Violation::UnknownToken {
                token: "r9-9".into()
            }]
        );
    }

    #[test]
    fn a_lost_answer_fails() {
        let mut h = clean();
        // The answer r1-3 was neither committed, orphaned nor used.
        h.calls.push(call("r1-2", rotated("a1-3", "r1-3")));
        let r = check(&h);
        assert_eq!(
            r.violations,
            vec![Violation::AnswerLost {
                credential: "c1".into(),
                token: "r1-3".into()
            }]
        );
        // An orphan of another credential does not account for it.
        h.orphans.push(FinalOrphan {
            credential: "c2".into(),
            refresh_token: "r1-3".into(),
        });
        assert!(!check(&h).ok());
        // Nor does a stale row.
        let mut h = clean();
        h.orphans.clear();
        let r = check(&h);
        assert_eq!(
            r.violations,
            vec![Violation::AnswerLost {
                credential: "c2".into(),
                token: "r2-2".into()
            }]
        );
    }

    #[test]
    fn a_dead_or_missing_credential_fails() {
        let mut h = clean();
        h.rows[0].status = "needs_reauth".into();
        h.rows.pop();
        let r = check(&h);
        assert!(r.violations.contains(&Violation::NotActive {
            credential: "c1".into(),
            status: "needs_reauth".into()
        }));
        assert!(r.violations.contains(&Violation::NotActive {
            credential: "c2".into(),
            status: "missing".into()
        }));
    }

    #[test]
    fn a_failed_request_outside_an_outage_fails() {
        let mut h = clean();
        // Replica 0 was never down.
        h.requests.push(req(0, "c2", 150, false, None));
        let r = check(&h);
        assert_eq!(
            r.violations,
            vec![Violation::RequestFailed {
                replica: 0,
                credential: "c2".into(),
                start_ms: 150
            }]
        );
        // The same request on replica 1 during its outage is not checked.
        let mut h = clean();
        h.requests.push(req(1, "c2", 150, false, None));
        assert!(check(&h).ok());
    }

    #[test]
    fn only_an_unavailable_refusal_during_a_store_outage_is_left_out() {
        let store_down = Outage {
            replica: 0,
            from_ms: 140,
            to_ms: 160,
        };
        // Refused with dependency_unavailable while the store was locked.
        let mut h = clean();
        h.store_outages.push(store_down);
        h.requests.push(req(0, "c2", 150, false, None));
        let r = check(&h);
        assert!(r.ok(), "{}", r.summary());
        assert_eq!((r.requests_in_store_outage, r.store_outages), (1, 1));
        // Refused for another reason: a violation.
        let mut h = clean();
        h.store_outages.push(store_down);
        let mut q = req(0, "c2", 150, false, None);
        q.reason = Some("internal".into());
        h.requests.push(q);
        assert_eq!(check(&h).violations.len(), 1);
        // Refused with dependency_unavailable outside it: a violation.
        let mut h = clean();
        h.store_outages.push(store_down);
        h.requests.push(req(0, "c2", 170, false, None));
        assert_eq!(check(&h).violations.len(), 1);
        // A request that succeeded during it is checked as usual.
        let mut h = clean();
        h.store_outages.push(store_down);
        h.requests.push(req(0, "c1", 150, true, Some("a2-1")));
        let r = check(&h);
        assert_eq!(r.violations.len(), 1, "{}", r.summary());
        assert_eq!(r.requests_in_store_outage, 0);
    }

    #[test]
    fn a_request_with_a_wrong_token_fails() {
        for bad in [Some("a2-1"), Some("forged"), None] {
            let mut h = clean();
            // c1's request carried c2's token, a forged one, or none.
            h.requests.push(req(0, "c1", 400, true, bad));
            let r = check(&h);
            assert_eq!(
                r.violations,
                vec![Violation::InvalidAccessToken {
                    credential: "c1".into(),
                    token: bad.unwrap_or("none").into()
                }],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_inconsistent_replay_fails() {
        let mut h = clean();
        // A "replay" of a token never presented before.
        h.calls.push(call("r1-2", replayed("a1-3", "r1-3")));
        h.rows[0] = row("c1", "r1-3", "a1-3");
        let r = check(&h);
        assert!(r.violations.contains(&Violation::Reused {
            credential: "c1".into(),
            token: "r1-2".into()
        }));
    }
}
