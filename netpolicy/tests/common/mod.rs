//! Helpers shared by netpolicy's integration tests.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::path::PathBuf;

/// `<workspace root>/../shared/corpora`; a missing corpus fails the test.
pub fn corpora() -> PathBuf {
    if let Ok(dir) = std::env::var("CHOKEPOINT_CORPORA") {
        return PathBuf::from(dir);
    }
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let candidate = dir.join("../shared/corpora");
        if candidate.join("INDEX.md").is_file() {
            return candidate;
        }
        assert!(
            dir.pop(),
            "../shared/corpora not found above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
}

/// Read a corpus file as text.
pub fn corpus(rel: &str) -> String {
    let p = corpora().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("corpus {}: {e}", p.display()))
}
