//! # containers — hardened exec containers (SKELETON, filled in by the containers work)
#![forbid(unsafe_code)]
