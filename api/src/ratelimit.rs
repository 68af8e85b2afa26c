//! Per-user token buckets for ticket mints and upgrades.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets kept before idle ones are dropped.
const MAX_BUCKETS: usize = 100_000;

/// A token bucket per (org, user).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<(String, String), (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` per second sustained, `burst` at once.
    pub fn new(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one token for (org, sub); whether there was one.
    pub fn allow(&self, org: &str, sub: &str) -> bool {
        let now = Instant::now();
        let mut map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_BUCKETS {
            // Drop buckets that have refilled completely: they carry no state.
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let entry = map
            .entry((org.to_owned(), sub.to_owned()))
            .or_insert((self.burst, now));
        let (tokens, at) = entry;
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse() {
        let l = RateLimiter::new(1, 3);
        assert!(l.allow("o", "u"));
        assert!(l.allow("o", "u"));
        assert!(l.allow("o", "u"));
        assert!(!l.allow("o", "u"));
        assert!(l.allow("o", "v"));
        assert!(l.allow("p", "u"));
    }
}
