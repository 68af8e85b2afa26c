//! Address classification over the IANA special-purpose registries.
//!
//! SKELETON: contract only; bodies are filled in by the netpolicy work.

use std::net::IpAddr;

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

/// Classify an address; IPv4 embedded in IPv6 (mapped, compatible, NAT64) is
/// decoded and classified as the IPv4 it carries.
pub fn classify(ip: IpAddr) -> AddrClass {
    let _ = ip;
    AddrClass::Reserved
}
