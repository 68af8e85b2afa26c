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
//! IPv6: the `inet` table drops IPv6 whose input or output interface is an
//! exec network's bridge (the network is created with a fixed bridge name),
//! so no IPv6 reaches the host or is routed; with br_netfilter that covers
//! bridged IPv6 as well. The `bridge` table cannot name a bridge on kernels
//! without CONFIG_NFT_BRIDGE_META, so without br_netfilter bridged IPv6
//! relies on Docker keeping IPv6 off exec containers (proven in the Docker
//! end-to-end test).
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
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Drop as NfDrop, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The name of both tables chokepoint owns.
pub const TABLE: &str = "chokepoint";
/// Hook priority of every chain: before Docker's filter (0).
pub const PRIORITY: i32 = -10;

/// One org's exec network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecNet {
    /// The org id (for comments and status).
    pub org: String,
    /// The subnet its exec containers get addresses from.
    pub subnet: Ipv4Net,
    /// The proxy's fixed address on that network.
    pub proxy: Ipv4Addr,
    /// The Linux bridge of that network (IPv6 through it is dropped in the
    /// `inet` table, see [`ipv6_rules`]).
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

/// The rules that drop IPv6 to and from an exec bridge in the `inet`
/// table: IPv6 from an exec network to the host or routed anywhere, and,
/// when br_netfilter passes bridged IPv6 to the inet hooks, between the
/// bridge's ports too. The `bridge` table gets none: naming a bridge there
/// needs `meta ibrname` (CONFIG_NFT_BRIDGE_META), which kernels may lack
/// (this project's CI kernel does), so bridged IPv6 without br_netfilter is
/// left to Docker (docs/threat-model-kernel.md).
fn ipv6_rules(n: &ExecNet, family: NfFamily, forward: bool) -> Vec<Vec<Statement<'static>>> {
    if family != NfFamily::INet {
        return Vec::new();
    }
    let bridge = || text(&n.bridge);
    let mut rules = vec![vec![
        eq(meta(MetaKey::Iifname), bridge()),
        eq(meta(MetaKey::Nfproto), text("ipv6")),
        drop_(),
    ]];
    if forward {
        rules.push(vec![
            eq(meta(MetaKey::Oifname), bridge()),
            eq(meta(MetaKey::Nfproto), text("ipv6")),
            drop_(),
        ]);
    }
    rules
}

/// The rule bodies (statement lists) of one chain, for one family.
fn chain_rules(plan: &Plan, family: NfFamily, forward: bool) -> Vec<Vec<Statement<'static>>> {
    let mut rules = Vec::new();
    let port = u32::from(plan.proxy_port);
    for n in &plan.nets {
        rules.extend(ipv6_rules(n, family, forward));
        if forward {
            // exec -> proxy:port (bridged, or routed where the proxy is on
            // another segment).
            rules.push(vec![
                eq(payload("ip", "saddr"), net(n.subnet)),
                eq(payload("ip", "daddr"), addr(n.proxy)),
                eq(payload("tcp", "dport"), Expression::Number(port)),
                accept(),
            ]);
            // The proxy's replies from that port.
            rules.push(vec![
                eq(payload("ip", "saddr"), addr(n.proxy)),
                eq(payload("tcp", "sport"), Expression::Number(port)),
                eq(payload("ip", "daddr"), net(n.subnet)),
                accept(),
            ]);
        }
        // Everything else from or to the exec subnet.
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
