// Shared by the bench and examples/profile.rs (included with `include!`).

/// Deterministic ordinary JSON logs (xorshift, no RNG crate).
fn logs(secret_every: Option<usize>) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let paths = [
        "/api/v1/users",
        "/api/v1/orders/123",
        "/healthz",
        "/static/app.js",
        "/auth/login",
        "/v2/search?q=rust+book",
    ];
    let msgs = [
        "request completed",
        "cache miss, fetching from origin",
        "user authenticated via session cookie",
        "retrying upstream after timeout",
        "token bucket refilled",
    ];
    let mut out = String::with_capacity(MIB + 512);
    let mut line_no = 0usize;
    while out.len() < MIB {
        line_no += 1;
        let r = next();
        let path = paths[(r % paths.len() as u64) as usize];
        let msg = msgs[((r >> 8) % msgs.len() as u64) as usize];
        let secret = match secret_every {
            Some(n) if line_no % n == 0 => {
                let tok: String = (0..36)
                    .map(|i| {
                        let a = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
                        a[((r >> (i % 50)) as usize + i * 7) % a.len()] as char
                    })
                    .collect();
                format!(",\"note\":\"Authorization: Bearer ghp_{tok}\"")
            }
            _ => String::new(),
        };
        out.push_str(&format!(
            "{{\"ts\":\"2026-11-25T03:{:02}:{:02}.{:03}Z\",\"level\":\"info\",\"msg\":\"{msg}\",\"method\":\"GET\",\"path\":\"{path}\",\"status\":200,\"latency_ms\":{},\"bytes\":{},\"request_id\":\"{:016x}\"{secret}}}\n",
            (r >> 20) % 60,
            (r >> 26) % 60,
            (r >> 32) % 1000,
            (r >> 40) % 500,
            (r >> 12) % 100_000,
            next()
        ));
    }
    out
}
