//! Homograph tables built from Unicode's own data
//! (`../shared/corpora/idna/confusables.txt`, UTS #39).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

mod common;

use netpolicy::{Destination, Reason};
use unicode_script::{Script, UnicodeScript};

fn reason(host: &str) -> Option<Reason> {
    Destination::parse_url(&format!("http://{host}/"))
        .err()
        .map(|e| e.reason())
}

/// (confusable char, ASCII letter) pairs of one script, from the corpus.
fn lookalikes(script: Script) -> Vec<(char, char)> {
    let text = common::corpus("idna/confusables.txt");
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split('#').next().unwrap_or("");
        let fields: Vec<&str> = code.split(';').map(str::trim).collect();
        let [src, tgt, ..] = fields.as_slice() else {
            continue;
        };
        let (Ok(s), Ok(t)) = (u32::from_str_radix(src, 16), u32::from_str_radix(tgt, 16)) else {
            continue;
        };
        let (Some(s), Some(t)) = (char::from_u32(s), char::from_u32(t)) else {
            continue;
        };
        // Lowercase letters only: UTS #46 lowercases hosts anyway.
        if s.script() == script && t.is_ascii_lowercase() && s.is_lowercase() {
            out.push((s, t));
        }
    }
    out
}

#[test]
fn whole_script_confusables_are_denied() {
    for script in [Script::Cyrillic, Script::Greek] {
        let pairs = lookalikes(script);
        assert!(pairs.len() >= 5, "{script:?}: {pairs:?}");
        // Every window of 4 look-alikes forms a label that reads as ASCII.
        // (Some look-alikes are disallowed by UTS #46 itself, and refused
        // by the parser before the spoof check sees them.)
        let mut spoofs = 0;
        for w in pairs.windows(4) {
            let label: String = w.iter().map(|(c, _)| *c).collect();
            let host = format!("{label}.com");
            match reason(&host) {
                Some(Reason::IdnSpoof) => spoofs += 1,
                Some(Reason::InvalidTarget | Reason::InvalidHost) => {}
                other => panic!("{host} ({script:?}): {other:?}"),
            }
        }
        assert!(
            spoofs * 2 >= pairs.len().saturating_sub(3),
            "{script:?}: {spoofs}"
        );
    }
    // The example and the classic one.
    assert_eq!(reason("аррӏе.com"), Some(Reason::IdnSpoof));
    assert_eq!(reason("xn--80ak6aa92e.com"), Some(Reason::IdnSpoof));
}

#[test]
fn mixed_script_labels_are_denied() {
    for script in [Script::Cyrillic, Script::Greek] {
        for (c, ascii) in lookalikes(script) {
            // Put the look-alike inside an ASCII word at the letter it imitates.
            let word = "paypalgoogleexample";
            if let Some(pos) = word.find(ascii) {
                let mut spoof = String::from(word);
                spoof.replace_range(pos..pos + 1, &c.to_string());
                let host = format!("{spoof}.com");
                assert_eq!(reason(&host), Some(Reason::IdnSpoof), "{host}");
                // The punycode form is decoded and refused the same way.
                let ascii_form = url::Url::parse(&format!("http://{host}/"))
                    .unwrap()
                    .host_str()
                    .unwrap()
                    .to_owned();
                assert!(ascii_form.starts_with("xn--"), "{ascii_form}");
                assert_eq!(reason(&ascii_form), Some(Reason::IdnSpoof), "{ascii_form}");
            }
        }
    }
}

#[test]
fn invisible_characters_are_denied() {
    // Most are mapped away by UTS #46; the punycode of a label that keeps one
    // must still be refused.
    for c in ['\u{200b}', '\u{2060}', '\u{feff}', '\u{00ad}'] {
        let host = format!("exa{c}mple.com");
        // Either UTS #46 removed it (and the name is plain example.com) or
        // the check refused it: it never survives into a checked host.
        match Destination::parse_url(&format!("http://{host}/")) {
            Ok(p) => assert_eq!(p.dest.host.to_text(), "example.com"),
            Err(e) => assert_eq!(e.reason(), Reason::IdnSpoof),
        }
    }
    let zwj = idna::punycode::encode_str("exa\u{200d}mple").unwrap();
    assert!(reason(&format!("xn--{zwj}.com")).is_some());
}

#[test]
fn real_idns_stay_allowed() {
    for host in [
        "münchen.de",
        "例え.jp",
        "bücher.example",
        "пример.рф",
        "δοκιμή.gr",
        "日本語.jp",
        "ドメイン名例.jp",
        "한국.kr",
        "中国.cn",
        "xn--mnchen-3ya.de",
        "straße.de",
    ] {
        assert_eq!(reason(host), None, "{host}");
    }
}
