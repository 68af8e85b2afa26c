//! Scrubbing a `serde_json::Value` value by value, structure kept.
//!
//! Strings are scrubbed; object keys too (a key can hold a secret); a string
//! value is also scanned together with its key (`"key": "value"`) so that
//! context rules such as gitleaks' `generic-api-key` see `"api_key": "…"`.
//! Numbers, booleans and null pass through.
//!
//! Must never: recurse deeper than [`JsonLimits::max_depth`] or visit more
//! than [`JsonLimits::max_nodes`] nodes; past either cap the remaining
//! subtree is replaced by `"[REDACTED:limit-exceeded]"`, never passed through.

use serde_json::{Map, Value};

use crate::{LIMIT_LABEL, Scrubber, Span, render};

/// Default maximum nesting depth scanned.
pub const MAX_JSON_DEPTH: usize = 64;
/// Default maximum number of nodes scanned.
pub const MAX_JSON_NODES: usize = 100_000;

/// Bounds on the work done for one JSON document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    /// Containers nested deeper than this are redacted whole.
    pub max_depth: usize,
    /// Nodes past this count are redacted.
    pub max_nodes: usize,
}

impl Default for JsonLimits {
    fn default() -> Self {
        Self {
            max_depth: MAX_JSON_DEPTH,
            max_nodes: MAX_JSON_NODES,
        }
    }
}

fn limit_marker() -> Value {
    Value::String(format!("[REDACTED:{LIMIT_LABEL}]"))
}

pub(crate) fn scrub_value(s: &Scrubber, v: &Value, limits: JsonLimits) -> Value {
    let mut budget = limits.max_nodes;
    walk(s, v, 0, limits.max_depth, &mut budget)
}

fn walk(s: &Scrubber, v: &Value, depth: usize, max_depth: usize, budget: &mut usize) -> Value {
    if *budget == 0 || depth > max_depth {
        return limit_marker();
    }
    *budget -= 1;
    match v {
        Value::String(text) => Value::String(s.scrub(text).into_owned()),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| walk(s, item, depth + 1, max_depth, budget))
                .collect(),
        ),
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, item) in map {
                let key = unique_key(&out, s.scrub(k).into_owned());
                let value = match item {
                    Value::String(text) if *budget > 0 && depth < max_depth => {
                        *budget -= 1;
                        Value::String(scrub_with_key(s, k, text))
                    }
                    _ => walk(s, item, depth + 1, max_depth, budget),
                };
                out.insert(key, value);
            }
            Value::Object(out)
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => v.clone(),
    }
}

/// Keep structure when two keys scrub to the same text.
fn unique_key(map: &Map<String, Value>, key: String) -> String {
    if !map.contains_key(&key) {
        return key;
    }
    let mut n = 2usize;
    loop {
        let candidate = format!("{key}#{n}");
        if !map.contains_key(&candidate) {
            return candidate;
        }
        n = n.saturating_add(1);
    }
}

/// Scrub `value`, scanning it as `"key": "value"` so key-context rules fire.
fn scrub_with_key(s: &Scrubber, key: &str, value: &str) -> String {
    let composite = format!("\"{key}\": \"{value}\"");
    let offset = key.len() + 5;
    let end = offset + value.len();
    let spans: Vec<Span> = s
        .spans(&composite)
        .into_iter()
        .filter(|sp| sp.end > offset && sp.start < end)
        .map(|sp| Span {
            start: sp.start.max(offset) - offset,
            end: sp.end.min(end) - offset,
            label: sp.label,
        })
        .collect();
    if spans.is_empty() {
        return value.to_owned();
    }
    render(value, &spans, 0, value.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scrubs_nested_values_and_keys() {
        let gh = format!("ghp_{}", "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5");
        let v = json!({"a": [1, true, null, {"b": {"c": format!("tok {gh}")}}], gh.clone(): "x"});
        let out = Scrubber::new().scrub_json(&v);
        let text = out.to_string();
        assert!(!text.contains(&gh), "{text}");
        assert_eq!(out["a"][0], json!(1));
        assert_eq!(out["a"][1], json!(true));
    }

    #[test]
    fn key_context_is_used() {
        let v = json!({"api_key": "Zx81kQ0pLm29sJd7Fh3W"});
        let out = Scrubber::new().scrub_json(&v);
        assert_eq!(out["api_key"], json!("[REDACTED:generic-api-key]"), "{out}");
    }

    #[test]
    fn limits_redact_the_rest() {
        let mut v = json!("leaf");
        for _ in 0..10 {
            v = json!([v]);
        }
        let limits = JsonLimits {
            max_depth: 3,
            max_nodes: 1000,
        };
        let out = Scrubber::new().scrub_json_with(&v, limits).to_string();
        assert!(out.contains(LIMIT_LABEL) && !out.contains("leaf"), "{out}");
        let v = json!(["a", "b", "c", "d"]);
        let limits = JsonLimits {
            max_depth: 10,
            max_nodes: 3,
        };
        let out = Scrubber::new().scrub_json_with(&v, limits);
        assert_eq!(out[3], limit_marker());
        assert_eq!(out[0], json!("a"));
    }
}
