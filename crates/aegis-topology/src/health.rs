//! A node's own report of its health, carried in its topology entry.

use std::fmt;
use std::str::FromStr;

/// A node's health, with the wire strings of the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum HealthStatus {
    /// `"healthy"`.
    Healthy,
    /// `"unhealthy"`.
    Unhealthy,
    /// `"unknown"`: not checked yet.
    #[default]
    Unknown,
}

impl HealthStatus {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Unknown => "unknown",
        }
    }

    /// Reads a wire string; anything unrecognised is `Unknown`, as a peer
    /// may use a status this version does not know.
    pub fn from_wire(s: &str) -> Self {
        s.parse().unwrap_or(HealthStatus::Unknown)
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string was not one of `healthy`, `unhealthy`, `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown health status {0:?} (expected healthy, unhealthy or unknown)")]
pub struct ParseHealthStatusError(pub String);

impl FromStr for HealthStatus {
    type Err = ParseHealthStatusError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "healthy" => Ok(HealthStatus::Healthy),
            "unhealthy" => Ok(HealthStatus::Unhealthy),
            "unknown" => Ok(HealthStatus::Unknown),
            other => Err(ParseHealthStatusError(other.to_owned())),
        }
    }
}
