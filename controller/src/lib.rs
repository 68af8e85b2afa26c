//! # controller — kernel isolation, Docker networks and the operator CLI
//!
//! Subcommands of `egressctl` live in [`cli`], one module each.
#![forbid(unsafe_code)]

pub mod atomic_file;
pub mod cli;
pub mod daemon;
pub mod firewall;
pub mod network;
pub mod production;
pub mod reconcile;
pub mod supervise;
pub mod worker_scrape;
