//! Admission: how many connections one client address, one org, and one
//! org's tunnels may hold at once, so no client or org starves the others.
//!
//! Owns: the per-client, per-org and per-org-tunnel counters (one mutex,
//! held for a map update only) and the guards that give a slot back on
//! drop. Must never: let a slot leak (every admitted slot is a guard).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use netpolicy::Reason;

/// The caps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    /// Most connections from one client address.
    pub(crate) per_client: u32,
    /// Most connections from one org's clients.
    pub(crate) per_org: u32,
    /// Most open tunnels of one org.
    pub(crate) tunnels_per_org: u32,
}

#[derive(Default)]
struct Counts {
    clients: HashMap<IpAddr, u32>,
    orgs: HashMap<String, u32>,
    tunnels: HashMap<String, u32>,
}

/// The counters, shared by every worker thread.
pub(crate) struct Admission {
    caps: Caps,
    counts: Mutex<Counts>,
}

/// One admitted connection; gives its slots back on drop.
pub(crate) struct ConnSlot {
    admission: Arc<Admission>,
    client: IpAddr,
    org: Option<String>,
}

/// One admitted tunnel; gives its slot back on drop.
pub(crate) struct TunnelSlot {
    admission: Arc<Admission>,
    org: String,
}

/// Take one from a counter; drop the entry at zero (the maps stay as small
/// as the set of clients connected now).
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Admission {
    /// Counters with these caps.
    pub(crate) fn new(caps: Caps) -> Arc<Admission> {
        Arc::new(Admission {
            caps,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Admit a connection from `client` of `org` (`None`: a client of no
    /// org, capped per address only; it is refused at its first head).
    /// `Err` is `client_limit` or `org_limit`; a poisoned lock is
    /// `internal_error` (fail closed).
    pub(crate) fn connection(
        self: &Arc<Self>,
        client: IpAddr,
        org: Option<&str>,
    ) -> Result<ConnSlot, Reason> {
        let mut c = self.counts.lock().map_err(|_| Reason::InternalError)?;
        let per_client = c.clients.get(&client).copied().unwrap_or(0);
        if per_client >= self.caps.per_client {
            return Err(Reason::ClientLimit);
        }
        if let Some(org) = org {
            if c.orgs.get(org).copied().unwrap_or(0) >= self.caps.per_org {
                return Err(Reason::OrgLimit);
            }
            *c.orgs.entry(org.to_owned()).or_insert(0) += 1;
        }
        *c.clients.entry(client).or_insert(0) += 1;
        Ok(ConnSlot {
            admission: self.clone(),
            client,
            org: org.map(str::to_owned),
        })
    }

    /// Admit one more tunnel of `org`; `Err` is `tunnel_limit`.
    pub(crate) fn tunnel(self: &Arc<Self>, org: &str) -> Result<TunnelSlot, Reason> {
        let mut c = self.counts.lock().map_err(|_| Reason::InternalError)?;
        let n = c.tunnels.entry(org.to_owned()).or_insert(0);
        if *n >= self.caps.tunnels_per_org {
            return Err(Reason::TunnelLimit);
        }
        *n += 1;
        Ok(TunnelSlot {
            admission: self.clone(),
            org: org.to_owned(),
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Ok(mut c) = self.admission.counts.lock() {
            release(&mut c.clients, &self.client);
            if let Some(org) = &self.org {
                release(&mut c.orgs, org);
            }
        }
    }
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        if let Ok(mut c) = self.admission.counts.lock() {
            release(&mut c.tunnels, &self.org);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_slots_come_back() {
        let a = Admission::new(Caps {
            per_client: 2,
            per_org: 3,
            tunnels_per_org: 1,
        });
        let ip1: IpAddr = "10.0.0.1".parse().unwrap();
        let ip2: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = a.connection(ip1, Some("acme")).unwrap();
        let _s2 = a.connection(ip1, Some("acme")).unwrap();
        assert_eq!(
            a.connection(ip1, Some("acme")).err(),
            Some(Reason::ClientLimit)
        );
        let _s3 = a.connection(ip2, Some("acme")).unwrap();
        assert_eq!(
            a.connection(ip2, Some("acme")).err(),
            Some(Reason::OrgLimit)
        );
        // Another org is not affected.
        let _g = a.connection(ip2, Some("globex")).unwrap();
        drop(s1);
        let ip3: IpAddr = "10.0.0.3".parse().unwrap();
        let _s4 = a.connection(ip3, Some("acme")).unwrap();
        assert_eq!(
            a.connection(ip3, Some("acme")).err(),
            Some(Reason::OrgLimit)
        );
        let t = a.tunnel("acme").unwrap();
        assert_eq!(a.tunnel("acme").err(), Some(Reason::TunnelLimit));
        assert!(a.tunnel("globex").is_ok());
        drop(t);
        assert!(a.tunnel("acme").is_ok());
    }
}
