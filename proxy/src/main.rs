//! `egress-proxy`: SKELETON, filled in by the proxy work.
fn main() -> anyhow::Result<()> {
    Ok(())
}
