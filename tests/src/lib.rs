//! Shared harness for chokepoint's end-to-end tests (SKELETON).
#![forbid(unsafe_code)]
