//! IDN homograph checks (UTS #39 data), applied to every U-label.
//!
//! SKELETON: contract only; bodies are filled in by the netpolicy work.

/// Check one Unicode label (already UTS #46-mapped). `Err` carries a short,
/// static description of why it is a spoof.
pub fn check_label(label: &str) -> Result<(), &'static str> {
    let _ = label;
    Ok(())
}
