//! The provider-format corpus (`testdata/provider_formats.jsonl`, generated
//! by `testdata/gen_provider_formats.py` from each provider's published
//! token format; every value is synthetic): recall per provider family and
//! per context form, and false positives per negative category, each with a
//! floor that fails the test when it drops.
//!
//! A secret row is caught when the scrubbed text no longer contains any
//! 16-character window of the value (so a redaction that leaves most of the
//! secret behind is a miss) and shows a `[REDACTED:` marker. A negative row
//! is flagged when any marker appears.
#![allow(
    clippy::print_stdout,
    reason = "the test prints its figures, per family and context"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test harness: a missing or malformed corpus must fail loudly"
)]

use std::collections::BTreeMap;

use scrub::{Scrubber, StreamScrubber, scrub_str};

/// Lowest recall accepted for any provider family.
const FAMILY_FLOOR: f64 = 0.97;
/// Lowest recall accepted for any context form (env, JSON, XML, header…).
const CONTEXT_FLOOR: f64 = 0.95;
/// Lowest recall accepted over every secret row.
const OVERALL_FLOOR: f64 = 0.99;
/// Highest share of any negative category that may be flagged.
const NEGATIVE_CEILING: f64 = 0.03;

struct Row {
    provider: String,
    family: String,
    context: String,
    secret: bool,
    value: String,
    text: String,
}

fn load() -> Vec<Row> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/provider_formats.jsonl"
    );
    let data = std::fs::read_to_string(path).expect("testdata/provider_formats.jsonl");
    let rows: Vec<Row> = data
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap().to_owned();
            Row {
                provider: s("provider"),
                family: s("family"),
                context: s("context"),
                secret: v["kind"] == "secret",
                value: s("value"),
                text: s("text"),
            }
        })
        .collect();
    assert!(rows.len() > 1000, "corpus too small: {}", rows.len());
    rows
}

/// Does any 16-byte window of the value survive in `out`?
fn leaked(value: &str, out: &str) -> bool {
    let w = value.len().min(16);
    (0..=value.len() - w).any(|i| value.get(i..i + w).is_some_and(|part| out.contains(part)))
}

fn caught(row: &Row, out: &str) -> bool {
    out.contains("[REDACTED:") && !leaked(&row.value, out)
}

fn rate((hit, total): (usize, usize)) -> f64 {
    hit as f64 / total.max(1) as f64
}

#[test]
fn recall_per_family_and_context_and_false_positives_per_category() {
    let rows = load();
    let mut family: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut context: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut negative: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for row in &rows {
        let out = scrub_str(&row.text);
        if row.secret {
            let ok = caught(row, &out);
            for (map, key) in [(&mut family, &row.family), (&mut context, &row.context)] {
                let e = map.entry(key.clone()).or_default();
                e.0 += usize::from(ok);
                e.1 += 1;
            }
            if !ok {
                failures.push(format!(
                    "MISSED [{} {}] {:?}",
                    row.provider, row.context, out
                ));
            }
        } else {
            let flagged = out.contains("[REDACTED:");
            let e = negative.entry(row.family.clone()).or_default();
            e.0 += usize::from(flagged);
            e.1 += 1;
            if flagged {
                failures.push(format!(
                    "FALSE+ [{}] {:?} -> {:?}",
                    row.family, row.text, out
                ));
            }
        }
    }
    for f in &failures {
        println!("{f}");
    }
    let total = family
        .values()
        .fold((0, 0), |(a, b), (h, t)| (a + h, b + t));
    for (name, counts) in &family {
        println!(
            "family {name:16} recall {:6.2}% ({}/{})",
            rate(*counts) * 100.0,
            counts.0,
            counts.1
        );
    }
    for (name, counts) in &context {
        println!(
            "context {name:18} recall {:6.2}% ({}/{})",
            rate(*counts) * 100.0,
            counts.0,
            counts.1
        );
    }
    for (name, counts) in &negative {
        println!(
            "{name:24} flagged {:6.2}% ({}/{})",
            rate(*counts) * 100.0,
            counts.0,
            counts.1
        );
    }
    println!(
        "overall recall {:.2}% ({}/{})",
        rate(total) * 100.0,
        total.0,
        total.1
    );
    for (name, counts) in &family {
        assert!(rate(*counts) >= FAMILY_FLOOR, "family {name}: {counts:?}");
    }
    for (name, counts) in &context {
        assert!(rate(*counts) >= CONTEXT_FLOOR, "context {name}: {counts:?}");
    }
    for (name, counts) in &negative {
        assert!(rate(*counts) <= NEGATIVE_CEILING, "{name}: {counts:?}");
    }
    assert!(rate(total) >= OVERALL_FLOOR, "overall {total:?}");
    assert!(family.len() >= 8 && context.len() >= 15 && negative.len() >= 4);
}

/// Streaming in small chunks gives what one shot gives on every row (the
/// context rule reads back to the key and, for name/value pairs, across a
/// line).
#[test]
fn streamed_rows_equal_one_shot() {
    let scrubber = Scrubber::new();
    for row in load().iter().step_by(3) {
        let text = format!("{}\n{}\n{}", "pad ".repeat(40), row.text, "end ".repeat(40));
        let mut st = StreamScrubber::with_hold_back(scrubber.clone(), 96);
        let mut out = String::new();
        for chunk in text.as_bytes().chunks(7) {
            out.push_str(&st.push_bytes(chunk));
        }
        out.push_str(&st.flush());
        assert_eq!(out, scrub_str(&text), "[{} {}]", row.provider, row.context);
    }
}
