//! Reading /proc/PID/status in tests: who a process runs as, its
//! capabilities, its parent and state.

/// Whether this test process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// The `Name:` fields of /proc/PID/status (`None`: no such process).
pub fn status(pid: u32) -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect(),
    )
}

/// One field of [`status`]'s answer (empty when absent).
pub fn field(st: &[(String, String)], name: &str) -> String {
    st.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}
