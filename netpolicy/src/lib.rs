//! # netpolicy — every allow/deny decision chokepoint makes
//!
//! This crate owns the answer to one question: *may this request leave?* It is
//! a pure library over plain data: it never opens a socket, never resolves a
//! name, never reads a clock and holds no global state. The proxy and the
//! worker do the I/O around it and ask it at each step:
//!
//! 1. [`Destination`]: parse a request target once into a canonical record
//!    (scheme, normalized ASCII host or IP literal, port).
//! 2. [`decide`]: the method-aware policy verdict for a [`Request`], with a
//!    [`Reason`].
//! 3. [`check_addrs`]: after the caller resolved the host, validate every
//!    address ([`ip::classify`]) and return exactly the addresses to dial.
//!
//! It must never: allow on an error (every failure is a denial with a
//! [`Reason`]), resolve a name, or hand back a hostname to dial.
#![forbid(unsafe_code)]

pub mod decide;
pub mod dest;
pub mod headers;
pub mod homograph;
pub mod ip;
pub mod policy;
pub mod reason;

pub use decide::{Decision, Method, Request, Source, Verdict, check_addrs, decide};
pub use dest::{DestError, Destination, Host, ParsedUrl, Scheme};
pub use ip::{AddrClass, classify};
pub use policy::{OrgId, Policy, PolicyError};
pub use reason::Reason;
