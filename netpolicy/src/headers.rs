//! The security headers every chokepoint HTTP endpoint sends on every
//! response (errors and upgrades included): the API, the worker's API and
//! the proxy's admin listener. One list, so the binaries cannot drift.

/// `(name, value)` pairs, names in lower case.
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("content-security-policy", "default-src 'none'"),
    ("referrer-policy", "no-referrer"),
];
