//! The egress policy: YAML (`version: v1`), strict, validated into types.
//!
//! SKELETON: contract only; bodies are filled in by the netpolicy work.

use std::net::IpAddr;
use std::path::Path;

use crate::Destination;

/// An organization id as written in the policy (`[a-z0-9][a-z0-9_-]{0,62}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId(String);

impl OrgId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A policy file that failed to load: where, which field, and what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}: {problem}; {fix}")]
pub struct PolicyError {
    /// The file name (or `<string>`).
    pub file: String,
    /// 1-based line (0 when unknown, e.g. an I/O error).
    pub line: usize,
    /// The dotted field path, e.g. `orgs.acme.clients[0]`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
    /// What to write instead.
    pub fix: String,
}

/// A validated policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    _private: (),
}

impl Policy {
    /// Parse and validate policy YAML. `file` names the source in errors.
    pub fn from_yaml(file: &str, text: &str) -> Result<Policy, PolicyError> {
        let _ = text;
        Err(PolicyError {
            file: file.to_owned(),
            line: 0,
            field: String::new(),
            problem: "not implemented yet".to_owned(),
            fix: String::new(),
        })
    }

    /// Read and parse a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            file: name.clone(),
            line: 0,
            field: String::new(),
            problem: format!("cannot read the file: {e}"),
            fix: "pass the path of a readable policy YAML file".to_owned(),
        })?;
        Policy::from_yaml(&name, &text)
    }

    /// The org whose `clients` contain this source address (most specific
    /// prefix wins), if any.
    pub fn org_for_client(&self, ip: IpAddr) -> Option<&OrgId> {
        let _ = ip;
        None
    }

    /// Whether the org exists.
    pub fn org(&self, name: &str) -> Option<&OrgId> {
        let _ = name;
        None
    }

    /// Whether `ip` is inside `unsafe_allow_ranges`.
    pub fn unsafe_allowed(&self, ip: IpAddr) -> bool {
        let _ = ip;
        false
    }

    /// Whether `dest` names a package repository host (any port).
    pub fn is_package_repo(&self, dest: &Destination) -> bool {
        let _ = dest;
        false
    }
}
