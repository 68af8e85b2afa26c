//! # scrub — remove secrets from everything chokepoint emits
//!
//! SKELETON: filled in by the token-scrubbing work.
#![forbid(unsafe_code)]

/// Scrub one text. Placeholder: returns the input unchanged until the scrubber lands.
pub fn scrub_str(input: &str) -> std::borrow::Cow<'_, str> {
    std::borrow::Cow::Borrowed(input)
}
