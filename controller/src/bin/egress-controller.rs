//! `egress-controller`: SKELETON, filled in by the kernel-isolation work.
fn main() -> anyhow::Result<()> {
    Ok(())
}
