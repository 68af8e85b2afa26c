//! Address classification over the IANA special-purpose registries.
//!
//! [`classify`] answers one question for the dialer: is this address globally
//! reachable unicast? Everything else gets a class naming why not. The ranges
//! and their sources are listed in `docs/blocked-ranges.md`.
//!
//! IPv4 carried inside IPv6 is decoded and classified as the IPv4 it carries:
//! IPv4-mapped (`::ffff:0:0/96`), IPv4-compatible (`::/96`, deprecated) and
//! the NAT64 well-known prefix (`64:ff9b::/96`). The NAT64 local-use prefix
//! (`64:ff9b:1::/48`) is a site's own translator and is denied whole. 6to4
//! (`2002::/16`) and Teredo (`2001::/32`) are deprecated tunnels and are
//! denied outright: their embedded addresses cannot be trusted to be the
//! ones the packets reach.
//!
//! Pure integer matching: no allocation, no table walk.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The class of an address. Only [`AddrClass::Public`] may be dialed (unless
/// the policy's `unsafe_allow_ranges` covers the address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AddrClass {
    /// Globally reachable unicast.
    Public,
    /// 10/8, 172.16/12, 192.168/16, fc00::/7.
    Private,
    /// 127/8, ::1.
    Loopback,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// 100.64/10.
    SharedCgnat,
    /// 0/8, ::, 255.255.255.255 and other "this host"/broadcast.
    Unspecified,
    /// 224/4, ff00::/8.
    Multicast,
    /// Documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20).
    Documentation,
    /// 198.18/15.
    Benchmarking,
    /// 240/4, 192.0.0/24, fec0::/10, 100::/64 and other reserved or
    /// protocol-assignment ranges.
    Reserved,
    /// 6to4 (2002::/16), Teredo (2001::/32), 192.88.99/24: deprecated tunnels.
    DeprecatedTunnel,
}

impl AddrClass {
    /// Whether an address of this class may be dialed.
    pub const fn is_public(self) -> bool {
        matches!(self, AddrClass::Public)
    }

    /// A stable snake_case name (for audit detail and `egressctl check`).
    pub const fn as_str(self) -> &'static str {
        match self {
            AddrClass::Public => "public",
            AddrClass::Private => "private",
            AddrClass::Loopback => "loopback",
            AddrClass::LinkLocal => "link_local",
            AddrClass::SharedCgnat => "shared_cgnat",
            AddrClass::Unspecified => "unspecified",
            AddrClass::Multicast => "multicast",
            AddrClass::Documentation => "documentation",
            AddrClass::Benchmarking => "benchmarking",
            AddrClass::Reserved => "reserved",
            AddrClass::DeprecatedTunnel => "deprecated_tunnel",
        }
    }
}

/// Classify an address; IPv4 embedded in IPv6 (mapped, compatible, NAT64) is
/// decoded and classified as the IPv4 it carries.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Whether `addr` lies in `base/len` (IPv4, as integers).
const fn in4(addr: u32, base: u32, len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    addr & mask == base
}

/// Whether `addr` lies in `base/len` (IPv6, as integers).
const fn in6(addr: u128, base: u128, len: u32) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    addr & mask == base
}

/// Classify an IPv4 address (IANA IPv4 Special-Purpose Address Registry).
pub fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let a = u32::from(ip);
    let first = a >> 24;
    match first {
        0 => AddrClass::Unspecified,       // 0/8 "this network" (RFC 791)
        10 => AddrClass::Private,          // RFC 1918
        127 => AddrClass::Loopback,        // RFC 1122
        224..=239 => AddrClass::Multicast, // RFC 5771
        240..=255 => {
            if a == u32::MAX {
                AddrClass::Unspecified // limited broadcast (RFC 919)
            } else {
                AddrClass::Reserved // 240/4 (RFC 1112)
            }
        }
        100 if in4(a, 0x6440_0000, 10) => AddrClass::SharedCgnat, // 100.64/10 (RFC 6598)
        169 if in4(a, 0xA9FE_0000, 16) => AddrClass::LinkLocal,   // 169.254/16 (RFC 3927)
        172 if in4(a, 0xAC10_0000, 12) => AddrClass::Private,     // 172.16/12
        192 => {
            if in4(a, 0xC0A8_0000, 16) {
                AddrClass::Private // 192.168/16
            } else if in4(a, 0xC000_0000, 24) {
                // 192.0.0/24 IETF protocol assignments (RFC 6890), including
                // 192.0.0.170/171 (NAT64 discovery) and DS-Lite 192.0.0.0/29.
                AddrClass::Reserved
            } else if in4(a, 0xC000_0200, 24) {
                AddrClass::Documentation // TEST-NET-1 (RFC 5737)
            } else if in4(a, 0xC058_6300, 24) {
                AddrClass::DeprecatedTunnel // 6to4 relay anycast (RFC 7526)
            } else {
                AddrClass::Public
            }
        }
        198 => {
            if in4(a, 0xC612_0000, 15) {
                AddrClass::Benchmarking // 198.18/15 (RFC 2544)
            } else if in4(a, 0xC633_6400, 24) {
                AddrClass::Documentation // TEST-NET-2
            } else {
                AddrClass::Public
            }
        }
        203 if in4(a, 0xCB00_7100, 24) => AddrClass::Documentation, // TEST-NET-3
        _ => AddrClass::Public,
    }
}

/// Classify an IPv6 address (IANA IPv6 Special-Purpose Address Registry).
pub fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let a = u128::from(ip);
    if a == 0 {
        return AddrClass::Unspecified; // ::/128
    }
    if a == 1 {
        return AddrClass::Loopback; // ::1/128
    }
    // IPv4-mapped ::ffff:0:0/96 (RFC 4291): classify the IPv4 it carries.
    if in6(a, 0xffff_0000_0000, 96) {
        return classify_v4(Ipv4Addr::from(a as u32));
    }
    // IPv4-compatible ::/96 (deprecated, RFC 4291): same treatment; the
    // remaining ::/8 space is reserved.
    if in6(a, 0, 96) {
        return classify_v4(Ipv4Addr::from(a as u32));
    }
    // IPv4-IPv6 translation 64:ff9b::/96 (RFC 6052): the embedded IPv4 is the
    // real destination.
    if in6(a, 0x0064_ff9b << 96, 96) {
        return classify_v4(Ipv4Addr::from(a as u32));
    }
    // Local-use IPv4/IPv6 translation 64:ff9b:1::/48 (RFC 8215): a site's own
    // translator; not globally reachable.
    if in6(a, 0x0064_ff9b_0001 << 80, 48) {
        return AddrClass::Private;
    }
    // 100::/64 discard-only (RFC 6666); the rest of 100::/8 is unassigned.
    if in6(a, 0x0100 << 112, 64) {
        return AddrClass::Reserved;
    }
    let top16 = (a >> 112) as u16;
    match top16 {
        // Multicast ff00::/8 (RFC 4291).
        0xff00..=0xffff => return AddrClass::Multicast,
        // Link-local fe80::/10; site-local fec0::/10 (deprecated, RFC 3879).
        0xfe80..=0xfebf => return AddrClass::LinkLocal,
        0xfec0..=0xfeff => return AddrClass::Reserved,
        // Unique local fc00::/7 (RFC 4193).
        0xfc00..=0xfdff => return AddrClass::Private,
        // 6to4 2002::/16 (RFC 3056, deprecated by RFC 7526).
        0x2002 => return AddrClass::DeprecatedTunnel,
        _ => {}
    }
    if top16 == 0x2001 {
        let second = (a >> 96) as u16;
        // Teredo 2001::/32 (RFC 4380).
        if second == 0x0000 {
            return AddrClass::DeprecatedTunnel;
        }
        // Documentation 2001:db8::/32 (RFC 3849).
        if second == 0x0db8 {
            return AddrClass::Documentation;
        }
        // IETF protocol assignments 2001::/23 (RFC 2928), except the few
        // that the registry marks globally reachable (PCP anycast 2001:1::1,
        // TURN anycast 2001:1::2, AMT 2001:3::/32, AS112 2001:4:112::/48,
        // ORCHIDv2 2001:20::/28 is NOT global). Deny the whole /23 but for
        // those assignments.
        if in6(a, 0x2001 << 112, 23) {
            if in6(a, 0x2001_0003 << 96, 32) || in6(a, 0x2001_0004_0112 << 80, 48) {
                return AddrClass::Public;
            }
            // 2001:2::/48 benchmarking (RFC 5180).
            if in6(a, 0x2001_0002_0000 << 80, 48) {
                return AddrClass::Benchmarking;
            }
            return AddrClass::Reserved;
        }
    }
    // Documentation 3fff::/20 (RFC 9637).
    if in6(a, 0x3fff << 112, 20) {
        return AddrClass::Documentation;
    }
    // SRv6 SIDs 5f00::/16 (RFC 9602): not globally reachable.
    if top16 == 0x5f00 {
        return AddrClass::Reserved;
    }
    // Everything outside 2000::/3 (global unicast) is unassigned or special.
    if !in6(a, 0x2000 << 112, 3) {
        return AddrClass::Reserved;
    }
    AddrClass::Public
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> AddrClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn table() {
        let cases = [
            ("0.0.0.0", AddrClass::Unspecified),
            ("0.1.2.3", AddrClass::Unspecified),
            ("10.0.0.1", AddrClass::Private),
            ("100.64.0.1", AddrClass::SharedCgnat),
            ("100.127.255.255", AddrClass::SharedCgnat),
            ("100.128.0.1", AddrClass::Public),
            ("127.0.0.1", AddrClass::Loopback),
            ("127.255.255.254", AddrClass::Loopback),
            ("169.254.169.254", AddrClass::LinkLocal),
            ("172.16.0.1", AddrClass::Private),
            ("172.31.255.255", AddrClass::Private),
            ("172.32.0.1", AddrClass::Public),
            ("192.0.0.170", AddrClass::Reserved),
            ("192.0.2.1", AddrClass::Documentation),
            ("192.88.99.1", AddrClass::DeprecatedTunnel),
            ("192.168.1.1", AddrClass::Private),
            ("198.18.0.1", AddrClass::Benchmarking),
            ("198.19.255.255", AddrClass::Benchmarking),
            ("198.51.100.7", AddrClass::Documentation),
            ("203.0.113.9", AddrClass::Documentation),
            ("224.0.0.1", AddrClass::Multicast),
            ("239.255.255.250", AddrClass::Multicast),
            ("240.0.0.1", AddrClass::Reserved),
            ("255.255.255.255", AddrClass::Unspecified),
            ("8.8.8.8", AddrClass::Public),
            ("93.184.215.14", AddrClass::Public),
            ("::", AddrClass::Unspecified),
            ("::1", AddrClass::Loopback),
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("::ffff:8.8.8.8", AddrClass::Public),
            ("::127.0.0.1", AddrClass::Loopback),
            ("::10.1.2.3", AddrClass::Private),
            ("64:ff9b::a9fe:a9fe", AddrClass::LinkLocal),
            ("64:ff9b::808:808", AddrClass::Public),
            ("64:ff9b:1::1", AddrClass::Private),
            ("100::1", AddrClass::Reserved),
            ("2001::1", AddrClass::DeprecatedTunnel),
            ("2001:db8::1", AddrClass::Documentation),
            ("2001:2::1", AddrClass::Benchmarking),
            ("2001:10::1", AddrClass::Reserved),
            ("2001:20::1", AddrClass::Reserved),
            ("2002:7f00:1::1", AddrClass::DeprecatedTunnel),
            ("3fff::1", AddrClass::Documentation),
            ("5f00::1", AddrClass::Reserved),
            ("fc00::1", AddrClass::Private),
            ("fd12:3456::1", AddrClass::Private),
            ("fe80::1", AddrClass::LinkLocal),
            ("fec0::1", AddrClass::Reserved),
            ("ff02::1", AddrClass::Multicast),
            ("2606:4700::1111", AddrClass::Public),
            ("2a00:1450:4001::1", AddrClass::Public),
            ("4000::1", AddrClass::Reserved),
        ];
        for (s, want) in cases {
            assert_eq!(c(s), want, "{s}");
        }
    }
}
