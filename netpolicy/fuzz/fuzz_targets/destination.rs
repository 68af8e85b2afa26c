//! Fuzz the three Destination parsers: they must never panic, and whatever
//! they accept must be stable under re-normalization.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netpolicy::{Destination, Host};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = Destination::parse_url(s) {
        assert!(p.origin_form.starts_with('/'));
        recheck(&p.dest.host);
    }
    if let Ok(d) = Destination::parse_authority(s) {
        assert_ne!(d.port, 0);
        recheck(&d.host);
    }
    if let Ok(h) = Destination::normalize_host(s) {
        recheck(&h);
    }
});

fn recheck(h: &Host) {
    assert_eq!(Destination::normalize_host(&h.to_text()).as_ref(), Ok(h));
}
