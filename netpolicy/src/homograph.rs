//! IDN homograph checks (UTS #39 data), applied to every internationalized
//! label of a host after UTS #46 processing.
//!
//! A label is a spoof ([`check_label`] returns `Err`) when it
//! 1. holds an invisible or default-ignorable character (zero-width joiners,
//!    bidi controls, variation selectors, tags, ...);
//! 2. mixes scripts, except the combinations Chromium's IDN spoof checker
//!    allows for CJK writing (Latin + Han + Hiragana + Katakana, Latin + Han +
//!    Bopomofo, Latin + Han + Hangul). Common and Inherited characters
//!    (digits, hyphen, combining marks) belong to every script;
//! 3. is a whole-script confusable of an ASCII label: written in a single
//!    non-Latin script, every character of it has a UTS #39 skeleton made of
//!    ASCII letters and digits (Cyrillic `аррӏе` reads as `apple`).
//!
//! The confusable data is `data/confusables_ascii.txt`, derived from Unicode's
//! `confusables.txt` 15.0.0 by keeping the single-code-point mappings whose
//! skeleton is ASCII letters, digits or `-` (a Python one-liner over the
//! public file: for each `src ; target ;` line with one source code point
//! `>= 0x80` whose target decodes to ASCII alphanumerics, write
//! `<SRC hex> <target lowercased>`).
//!
//! Never: resolve, allocate per character on the hot path, or panic.

use std::collections::HashMap;
use std::sync::LazyLock;

use unicode_script::{Script, UnicodeScript};

static CONFUSABLES: &str = include_str!("../data/confusables_ascii.txt");

/// Code points whose UTS #39 skeleton is ASCII.
static ASCII_SKELETON: LazyLock<HashMap<char, &'static str>> = LazyLock::new(|| {
    CONFUSABLES
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (cp, skel) = l.split_once(' ')?;
            let c = char::from_u32(u32::from_str_radix(cp, 16).ok()?)?;
            Some((c, skel))
        })
        .collect()
});

/// Whether `c` is invisible or default-ignorable (Unicode
/// `Default_Ignorable_Code_Point`, plus the bidi controls and fillers that
/// render as nothing).
pub fn is_invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F..=0x1160 | 0x17B4..=0x17B5
        | 0x180B..=0x180F | 0x200B..=0x200F | 0x202A..=0x202E
        | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0
        | 0xFFF0..=0xFFF8 | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF)
}

/// A set of scripts as a small bit set over the ones we reason about, plus
/// an "other" marker per distinct other script (tracked by value).
#[derive(Default)]
struct Scripts {
    latin: bool,
    han: bool,
    hiragana: bool,
    katakana: bool,
    bopomofo: bool,
    hangul: bool,
    other: Option<Script>,
    other_many: bool,
}

impl Scripts {
    fn add(&mut self, s: Script) {
        match s {
            Script::Common | Script::Inherited | Script::Unknown => {}
            Script::Latin => self.latin = true,
            Script::Han => self.han = true,
            Script::Hiragana => self.hiragana = true,
            Script::Katakana => self.katakana = true,
            Script::Bopomofo => self.bopomofo = true,
            Script::Hangul => self.hangul = true,
            other => match self.other {
                None => self.other = Some(other),
                Some(prev) if prev == other => {}
                Some(_) => self.other_many = true,
            },
        }
    }

    fn count(&self) -> usize {
        [
            self.latin,
            self.han,
            self.hiragana,
            self.katakana,
            self.bopomofo,
            self.hangul,
            self.other.is_some(),
            self.other_many,
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }

    /// Mixed in a way no allowed combination covers.
    fn is_mixed(&self) -> bool {
        if self.count() <= 1 {
            return false;
        }
        if self.other.is_some() {
            return true;
        }
        let japanese = !self.bopomofo && !self.hangul;
        let chinese = !self.hiragana && !self.katakana && !self.hangul;
        let korean = !self.hiragana && !self.katakana && !self.bopomofo;
        !(japanese || chinese || korean)
    }
}

/// Check one Unicode label (already UTS #46-mapped). `Err` carries a short,
/// static description of why it is a spoof.
pub fn check_label(label: &str) -> Result<(), &'static str> {
    if label.is_ascii() {
        return Ok(());
    }
    let mut scripts = Scripts::default();
    for c in label.chars() {
        if is_invisible(c) {
            return Err("invisible or default-ignorable character");
        }
        scripts.add(c.script());
    }
    if scripts.is_mixed() {
        return Err("label mixes scripts");
    }
    // Whole-script confusable: a single non-Latin script whose every letter
    // has an ASCII skeleton (digits and hyphens are ASCII already).
    if scripts.other.is_some() {
        let all_ascii_lookalike = label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || ASCII_SKELETON.contains_key(&c));
        if all_ascii_lookalike {
            return Err("whole-script confusable of an ASCII label");
        }
    }
    // A Latin-script label made only of non-ASCII look-alikes of ASCII
    // letters (e.g. U+0251 LATIN SMALL LETTER ALPHA in `ɑpple`) is a
    // confusable too when every non-ASCII character maps to ASCII.
    if scripts.latin && scripts.count() == 1 {
        let lookalike_only = label
            .chars()
            .all(|c| c.is_ascii() || ASCII_SKELETON.contains_key(&c));
        if lookalike_only {
            return Err("confusable of an ASCII label");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_real_idns() {
        for l in [
            "münchen",
            "例え",
            "bücher",
            "ελληνικά",
            "пример",
            "日本語テキスト",
            "한국어",
            "straße",
        ] {
            assert_eq!(check_label(l), Ok(()), "{l}");
        }
    }

    #[test]
    fn denies_spoofs() {
        for l in [
            "аррӏе",           // Cyrillic whole-script "apple"
            "раураl",          // Cyrillic + Latin
            "gοogle",          // Greek omicron in Latin
            "exa\u{200d}mple", // zero-width joiner
            "ехаmрlе",         // mixed Cyrillic/Latin
            "ɑpple",           // Latin alpha look-alike
        ] {
            assert!(check_label(l).is_err(), "{l}");
        }
    }
}
