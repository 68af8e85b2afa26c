//! Properties of host normalization and address classes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use netpolicy::{AddrClass, Destination, Policy, classify};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// normalize(normalize(x)) == normalize(x).
    #[test]
    fn normalization_is_idempotent(s in "[a-zA-Z0-9ÄäöüßéΣσжЖ例え._-]{1,40}") {
        if let Ok(h) = Destination::normalize_host(&s) {
            let again = Destination::normalize_host(&h.to_text());
            prop_assert_eq!(again, Ok(h));
        }
    }

    /// A URL's host and the bare host normalize the same.
    #[test]
    fn url_and_bare_host_agree(s in "[a-z0-9ÄäöüßΣжЖ例.-]{1,30}") {
        let bare = Destination::normalize_host(&s).ok();
        let via_url = Destination::parse_url(&format!("http://{s}/")).ok().map(|p| p.dest.host);
        prop_assert_eq!(bare, via_url);
    }

    /// IPv4-mapped and IPv4-compatible IPv6 classify as the IPv4 they carry.
    #[test]
    fn embedded_v4_classifies_as_v4(bits in any::<u32>()) {
        let v4 = Ipv4Addr::from(bits);
        prop_assert_eq!(classify(IpAddr::V6(v4.to_ipv6_mapped())), classify(IpAddr::V4(v4)));
        let nat64 = std::net::Ipv6Addr::from((0x0064_ff9b_u128 << 96) | u128::from(bits));
        prop_assert_eq!(classify(IpAddr::V6(nat64)), classify(IpAddr::V4(v4)));
    }

    /// Every address of the private, loopback and link-local ranges is
    /// refused, whatever its host bits.
    #[test]
    fn blocked_ranges_hold_for_every_host(host in any::<u32>()) {
        for (net, class) in [
            ("10.0.0.0/8", AddrClass::Private),
            ("172.16.0.0/12", AddrClass::Private),
            ("192.168.0.0/16", AddrClass::Private),
            ("127.0.0.0/8", AddrClass::Loopback),
            ("169.254.0.0/16", AddrClass::LinkLocal),
            ("100.64.0.0/10", AddrClass::SharedCgnat),
        ] {
            let net: Ipv4Net = net.parse().unwrap();
            let mask = u32::MAX >> net.prefix_len();
            let ip = Ipv4Addr::from(u32::from(net.network()) | (host & mask));
            prop_assert_eq!(classify(IpAddr::V4(ip)), class);
        }
    }

    /// org_for_client agrees with CIDR containment.
    #[test]
    fn client_ranges_match_containment(net_bits in any::<u32>(), len in 8u8..=32, probe in any::<u32>()) {
        let net = Ipv4Net::new(Ipv4Addr::from(net_bits), len).unwrap().trunc();
        let yaml = format!("version: v1\norgs:\n  acme:\n    clients: [{net}]\n");
        let policy = Policy::from_yaml("p", &yaml).unwrap();
        for ip in [Ipv4Addr::from(probe), net.network(), net.broadcast()] {
            let got = policy.org_for_client(IpAddr::V4(ip)).is_some();
            prop_assert_eq!(got, net.contains(&ip), "{} in {}", ip, net);
        }
    }
}
