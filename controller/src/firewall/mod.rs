//! # firewall — the kernel rules that make the proxy the only way out
//!
//! [`render`] turns a [`Plan`] (each org's exec subnet and the proxy's fixed
//! address in it) into an nftables ruleset, as data (the `nftables` crate's
//! JSON schema). [`Firewall::apply`] loads it in ONE `nft -j -f` transaction
//! that replaces only chokepoint's own tables (`add table; delete table; add
//! table; chains; rules`), so the ruleset is applied whole or not at all and
//! no one else's rules are touched. [`Firewall::live`] reads them back for
//! drift detection.
//!
//! Two tables with the same intent:
//! - `inet chokepoint`: `forward` and `input` hooks, priority -10 (before
//!   Docker's iptables-nft filter at 0). Routed traffic from an exec subnet,
//!   and traffic from an exec subnet to the host itself, is dropped.
//! - `bridge chokepoint`: `forward` and `input` hooks of the bridge family,
//!   so traffic between containers on one bridge is dropped even when
//!   br_netfilter is not loaded (Docker >= 27.3 loads it lazily) — bridged
//!   frames never reach the inet hooks without it.
//!
//! By interface: the `inet` table drops everything (any protocol, IPv4 or
//! IPv6, any claimed source address) whose input or output interface is an
//! exec network's bridge (the network is created with a fixed bridge name),
//! except the proxy flow, and accepts the proxy's replies only within a
//! connection the exec container opened (`ct state established`). With
//! br_netfilter that covers bridged traffic as well. The `bridge` table
//! cannot name a bridge or use conntrack on kernels without
//! CONFIG_NFT_BRIDGE_META / nf_conntrack_bridge, so it matches addresses,
//! and without br_netfilter bridged IPv6 relies on Docker keeping IPv6 off
//! exec containers (proven in the Docker end-to-end test).
//!
//! Reboots: [`save_ruleset`] writes the rendered ruleset to a file (the
//! controller does after every apply); the `chokepoint-nft.service` unit
//! (controller/systemd/) loads it with `nft -j -f` before docker.service
//! starts, so no exec container runs before the rules exist.
//!
//! In both, the only traffic an exec subnet may send is TCP to
//! `proxy_ip:proxy_port`, and the only traffic it may receive is the proxy's
//! replies from that port. Everything else from or to an exec subnet is
//! dropped. The chains' policy is accept and the tables hold nothing but
//! these narrow accepts and drops: an accept is not final across tables, a
//! drop is. ARP is not IP and passes, so the proxy stays reachable.
//!
//! Must never: flush or delete a table it does not own, or leave a window
//! without rules during a re-apply.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{
    BinaryOperation, CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix,
};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Drop as NfDrop, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The name of both tables chokepoint owns.
pub const TABLE: &str = "chokepoint";
/// Hook priority of every chain: before Docker's filter (0).
pub const PRIORITY: i32 = -10;
/// Where the controller saves the rendered ruleset for the boot unit
/// (`controller/systemd/chokepoint-nft.service` loads it before Docker
/// starts). Persistent storage, not tmpfs.
pub const SAVED_RULESET: &str = "/var/lib/chokepoint/nft-ruleset.json";

/// One org's exec network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecNet {
    /// The org id (for comments and status).
    pub org: String,
    /// The subnet its exec containers get addresses from.
    pub subnet: Ipv4Net,
    /// The proxy's fixed address on that network.
    pub proxy: Ipv4Addr,
    /// The Linux bridge of that network (everything through it but the
    /// proxy flow is dropped in the `inet` table, see [`chain_rules`]).
    pub bridge: String,
}

/// What the rules must enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Every org's exec network.
    pub nets: Vec<ExecNet>,
    /// The proxy's port (3128).
    pub proxy_port: u16,
}

/// Why the rules could not be applied or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirewallError {
    /// `nft` failed or could not run.
    #[error("nft: {0}")]
    Nft(#[from] nftables::helper::NftablesError),
    /// The plan is inconsistent (a proxy address outside its subnet).
    #[error("invalid plan: {0}")]
    Plan(String),
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn addr(ip: Ipv4Addr) -> Expression<'static> {
    Expression::String(Cow::Owned(ip.to_string()))
}

fn net(n: Ipv4Net) -> Expression<'static> {
    if n.prefix_len() == 32 {
        return addr(n.addr());
    }
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(addr(n.network())),
        len: u32::from(n.prefix_len()),
    }))
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn drop_() -> Statement<'static> {
    Statement::Drop(Some(NfDrop {}))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn text(s: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(s.to_owned()))
}

/// `ct state established`: the packet belongs to a connection whose first
/// packet went the other way (the exec container opened it).
fn established() -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::CT(CT {
            key: Cow::Borrowed("state"),
            family: None,
            dir: None,
        })),
        right: text("established"),
        op: Operator::IN,
    })
}

/// `tcp flags & (syn | ack) == syn`: the first packet of a TCP connection.
fn tcp_syn_only() -> Statement<'static> {
    eq(
        Expression::BinaryOperation(Box::new(BinaryOperation::AND(
            payload("tcp", "flags"),
            Expression::List(vec![text("syn"), text("ack")]),
        ))),
        text("syn"),
    )
}

/// The rule bodies (statement lists) of one chain, for one family.
///
/// `inet` (routed traffic, traffic to the host, and bridged traffic when
/// br_netfilter is loaded) matches the exec bridge by interface name, so a
/// packet from that bridge is dropped whatever source address it claims (a
/// container with `CAP_NET_RAW` outside `HardenedSpec` could spoof one),
/// IPv6 included; the proxy's replies are accepted only within a
/// connection an exec container opened (`ct state established`).
///
/// `bridge` cannot name the bridge (`meta ibrname` needs
/// CONFIG_NFT_BRIDGE_META) nor use conntrack (`nf_conntrack_bridge`), both
/// missing on this project's CI kernel: it matches addresses, and refuses a
/// TCP connection opened from the proxy's port (a SYN without ACK) before
/// it accepts the proxy's replies. A spoofed source sent to the host is
/// still dropped by `inet` input, which sees every packet to the host.
fn chain_rules(plan: &Plan, family: NfFamily, forward: bool) -> Vec<Vec<Statement<'static>>> {
    let mut rules = Vec::new();
    let port = u32::from(plan.proxy_port);
    let inet = family == NfFamily::INet;
    for n in &plan.nets {
        let bridge = || text(&n.bridge);
        if forward {
            // exec -> proxy:port, bridged.
            let mut to_proxy = Vec::new();
            if inet {
                to_proxy.push(eq(meta(MetaKey::Iifname), bridge()));
            }
            to_proxy.extend([
                eq(payload("ip", "saddr"), net(n.subnet)),
                eq(payload("ip", "daddr"), addr(n.proxy)),
                eq(payload("tcp", "dport"), Expression::Number(port)),
                accept(),
            ]);
            rules.push(to_proxy);
            let from_proxy = || {
                vec![
                    eq(payload("ip", "saddr"), addr(n.proxy)),
                    eq(payload("tcp", "sport"), Expression::Number(port)),
                    eq(payload("ip", "daddr"), net(n.subnet)),
                ]
            };
            if inet {
                // The proxy's replies, only within a connection the exec
                // container opened.
                let mut reply = from_proxy();
                reply.extend([established(), accept()]);
                rules.push(reply);
            } else {
                // No conntrack here: a connection opened from the proxy's
                // port is refused, then its replies are accepted.
                let mut opened = from_proxy();
                opened.extend([tcp_syn_only(), drop_()]);
                rules.push(opened);
                let mut reply = from_proxy();
                reply.push(accept());
                rules.push(reply);
            }
        }
        if inet {
            // Everything else that enters from, or leaves through, the exec
            // bridge: every protocol and family, whatever source it claims.
            rules.push(vec![eq(meta(MetaKey::Iifname), bridge()), drop_()]);
            if forward {
                rules.push(vec![eq(meta(MetaKey::Oifname), bridge()), drop_()]);
            }
        }
        // Everything else from or to the exec subnet, by address.
        rules.push(vec![eq(payload("ip", "saddr"), net(n.subnet)), drop_()]);
        if forward {
            rules.push(vec![eq(payload("ip", "daddr"), net(n.subnet)), drop_()]);
        }
    }
    rules
}

/// Render the ruleset: one transaction that replaces chokepoint's two
/// tables whole.
pub fn render(plan: &Plan) -> Result<Nftables<'static>, FirewallError> {
    for n in &plan.nets {
        if !n.subnet.contains(&n.proxy) {
            return Err(FirewallError::Plan(format!(
                "org {}: proxy {} is outside {}",
                n.org, n.proxy, n.subnet
            )));
        }
    }
    let mut batch = Batch::new();
    for family in [NfFamily::INet, NfFamily::Bridge] {
        let table = || Table {
            family,
            name: Cow::Borrowed(TABLE),
            handle: None,
        };
        // add (no-op if present) + delete + add: atomic replace of our table only.
        batch.add(NfListObject::Table(table()));
        batch.delete(NfListObject::Table(table()));
        batch.add(NfListObject::Table(table()));
        for (name, hook, forward) in [
            ("forward", NfHook::Forward, true),
            ("input", NfHook::Input, false),
        ] {
            batch.add(NfListObject::Chain(Chain {
                family,
                table: Cow::Borrowed(TABLE),
                name: Cow::Borrowed(name),
                _type: Some(NfChainType::Filter),
                hook: Some(hook),
                prio: Some(PRIORITY),
                policy: Some(NfChainPolicy::Accept),
                ..Chain::default()
            }));
            for expr in chain_rules(plan, family, forward) {
                batch.add(NfListObject::Rule(Rule {
                    family,
                    table: Cow::Borrowed(TABLE),
                    chain: Cow::Borrowed(name),
                    expr: Cow::Owned(expr),
                    handle: None,
                    index: None,
                    comment: None,
                }));
            }
        }
    }
    Ok(batch.to_nftables())
}

/// Where `nft` runs: the current network namespace, or a named one
/// (`ip netns exec NAME nft`).
#[derive(Debug, Clone, Default)]
pub struct Firewall {
    /// A named network namespace, for tests.
    pub netns: Option<String>,
}

impl Firewall {
    fn program_and_prefix(&self) -> (&str, Vec<&str>) {
        match &self.netns {
            Some(ns) => ("ip", vec!["netns", "exec", ns.as_str(), "nft"]),
            None => ("nft", vec![]),
        }
    }

    /// Apply a rendered ruleset in one transaction.
    pub fn apply(&self, ruleset: &Nftables<'_>) -> Result<(), FirewallError> {
        let (program, prefix) = self.program_and_prefix();
        nftables::helper::apply_ruleset_with_args(ruleset, Some(program), &prefix)?;
        Ok(())
    }

    /// The rules chokepoint's tables hold now, as comparable text (one line
    /// per rule: family, chain, JSON of its statements; handles dropped).
    /// A missing table yields no lines.
    pub fn live(&self) -> Result<Vec<String>, FirewallError> {
        let mut out = Vec::new();
        for family in ["inet", "bridge"] {
            let (program, prefix) = self.program_and_prefix();
            // The helper always adds -j in front of the arguments, so the
            // netns prefix would land after it; call nft directly instead.
            let mut cmd = std::process::Command::new(program);
            cmd.args(&prefix)
                .args(["-j", "list", "table", family, TABLE]);
            let output = cmd.output().map_err(|e| {
                FirewallError::Nft(nftables::helper::NftablesError::NftExecution {
                    program: program.into(),
                    inner: e,
                })
            })?;
            if !output.status.success() {
                continue; // no such table: drift, reported as missing rules
            }
            let parsed: Nftables<'static> =
                serde_json::from_slice(&output.stdout).map_err(|e| {
                    FirewallError::Nft(nftables::helper::NftablesError::NftInvalidJson(e))
                })?;
            for obj in parsed.objects.iter() {
                if let nftables::schema::NfObject::ListObject(NfListObject::Rule(r)) = obj {
                    let body = serde_json::to_string(&r.expr).unwrap_or_default();
                    out.push(format!("{family} {} {body}", r.chain));
                }
                if let nftables::schema::NfObject::ListObject(NfListObject::Chain(c)) = obj {
                    out.push(format!(
                        "{family} chain {} {:?} {:?} {:?} {:?}",
                        c.name, c._type, c.hook, c.prio, c.policy
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Apply, then read back: the fingerprint later reads are compared with.
    pub fn apply_and_fingerprint(
        &self,
        ruleset: &Nftables<'_>,
    ) -> Result<Vec<String>, FirewallError> {
        self.apply(ruleset)?;
        self.live()
    }

    /// Whether the live rules differ from `fingerprint` (taken right after
    /// the last apply): a deleted or edited table, a rule added to ours.
    pub fn drifted(&self, fingerprint: &[String]) -> Result<bool, FirewallError> {
        Ok(self.live()? != fingerprint)
    }

    /// Check the live tables against what was rendered for `plan` and read
    /// back after the apply (`fingerprint`): both tables present, each
    /// holding as many rules as [`render`] put in it, and nothing changed
    /// since. `Err` names what is wrong (for the production check).
    pub fn verify(&self, plan: &Plan, fingerprint: &[String]) -> Result<(), String> {
        let live = self.live().map_err(|e| format!("cannot list them: {e}"))?;
        for (family, want) in rules_per_table(plan) {
            let prefix = format!("{family} ");
            let mine: Vec<&String> = live.iter().filter(|l| l.starts_with(&prefix)).collect();
            if mine.is_empty() {
                return Err(format!("the table `{family} {TABLE}` is absent"));
            }
            // Rule lines are `FAMILY CHAIN [statements…]`; chain lines
            // `FAMILY chain NAME …`.
            let rules = mine
                .iter()
                .filter(|l| l.split(' ').nth(2).is_some_and(|t| t.starts_with('[')))
                .count();
            if rules != want {
                return Err(format!(
                    "the table `{family} {TABLE}` holds {rules} rules, {want} were rendered"
                ));
            }
        }
        if live != fingerprint {
            return Err("the tables differ from the ruleset applied".to_owned());
        }
        Ok(())
    }
}

/// Write a rendered ruleset to `path` atomically (a temporary file in the
/// same folder, synced, then renamed), creating the folder: the file the
/// boot unit loads with `nft -j -f` before Docker starts.
pub fn save_ruleset(ruleset: &Nftables<'_>, path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec(ruleset).map_err(std::io::Error::other)?;
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    let tmp = dir.join(name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// The number of rules `render` puts in each table (`inet`, `bridge`), for
/// status output; the tables differ (IPv6 rules are `inet` only).
pub fn rules_per_table(plan: &Plan) -> [(&'static str, usize); 2] {
    let count =
        |family| chain_rules(plan, family, true).len() + chain_rules(plan, family, false).len();
    [
        ("inet", count(NfFamily::INet)),
        ("bridge", count(NfFamily::Bridge)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            nets: vec![
                ExecNet {
                    org: "acme".into(),
                    subnet: "10.231.1.0/24".parse().unwrap(),
                    proxy: "10.231.1.2".parse().unwrap(),
                    bridge: "cp-0ae701".into(),
                },
                ExecNet {
                    org: "globex".into(),
                    subnet: "10.231.2.0/24".parse().unwrap(),
                    proxy: "10.231.2.2".parse().unwrap(),
                    bridge: "cp-0ae702".into(),
                },
            ],
            proxy_port: 3128,
        }
    }

    #[test]
    fn rendered_ruleset_snapshot() {
        let json = serde_json::to_string_pretty(&render(&plan()).unwrap()).unwrap();
        insta::assert_snapshot!(json);
    }

    #[test]
    fn a_proxy_outside_its_subnet_is_refused() {
        let mut p = plan();
        p.nets[0].proxy = "10.9.9.9".parse().unwrap();
        assert!(matches!(render(&p), Err(FirewallError::Plan(_))));
    }

    #[test]
    fn only_our_tables_are_touched() {
        let json = serde_json::to_value(render(&plan()).unwrap()).unwrap();
        for obj in json["nftables"].as_array().unwrap() {
            let (_, body) = obj.as_object().unwrap().iter().next().unwrap();
            let (_, item) = body.as_object().unwrap().iter().next().unwrap();
            let table = item.get("table").or_else(|| item.get("name")).unwrap();
            assert_eq!(table, TABLE, "{obj}");
        }
    }
}
