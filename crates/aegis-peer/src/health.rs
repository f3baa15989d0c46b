//! The health model: status, info, checkers, and a shared handle.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

pub use aegis_topology::{HealthStatus, ParseHealthStatusError};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

/// A node's health as last set or checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthInfo {
    /// The status.
    pub status: HealthStatus,
    /// When it was last set or checked.
    pub last_checked: SystemTime,
    /// A human-readable message.
    pub message: String,
    /// The error that made the node unhealthy, if any.
    pub error: Option<String>,
}

impl HealthInfo {
    /// Status unknown, checked now, no message.
    pub fn new() -> Self {
        Self {
            status: HealthStatus::Unknown,
            last_checked: SystemTime::now(),
            message: String::new(),
            error: None,
        }
    }
}

impl Default for HealthInfo {
    fn default() -> Self {
        Self::new()
    }
}

/// The error a health check reports.
pub type HealthCheckError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed future, so that [`HealthChecker`] can be used as `&dyn`.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HealthCheckError>> + Send + 'a>>;

/// Something that can tell whether the node is healthy.
pub trait HealthChecker: Send + Sync {
    /// Runs the check: `Ok` means healthy.
    fn check(&self) -> CheckFuture<'_>;
    /// The checker's name, for messages.
    fn name(&self) -> &str;
}

/// A [`HealthChecker`] from an async closure.
///
/// ```
/// use aegis_peer::{FunctionHealthChecker, HealthChecker};
/// let db = FunctionHealthChecker::new("database", || async { Ok(()) });
/// assert_eq!(db.name(), "database");
/// ```
pub struct FunctionHealthChecker<F> {
    name: String,
    check: F,
}

impl<F, Fut> FunctionHealthChecker<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), HealthCheckError>> + Send + 'static,
{
    /// A checker named `name` that runs `check`.
    pub fn new(name: impl Into<String>, check: F) -> Self {
        Self {
            name: name.into(),
            check,
        }
    }
}

impl<F, Fut> HealthChecker for FunctionHealthChecker<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), HealthCheckError>> + Send + 'static,
{
    fn check(&self) -> CheckFuture<'_> {
        Box::pin((self.check)())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// A checker that always reports healthy.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysHealthy;

impl HealthChecker for AlwaysHealthy {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async { Ok(()) })
    }

    fn name(&self) -> &str {
        "always-healthy"
    }
}

/// A shared, observable health value: the server answers `GetHealth` and the
/// standard gRPC health service from it.
#[derive(Clone)]
pub struct Health {
    tx: Arc<watch::Sender<HealthInfo>>,
    /// The status of each of the node's own gRPC services, by gRPC name.
    services: Arc<watch::Sender<std::collections::BTreeMap<String, HealthStatus>>>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Health").field(&*self.tx.borrow()).finish()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Unknown health.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(HealthInfo::new())),
            services: Arc::new(watch::Sender::new(std::collections::BTreeMap::new())),
        }
    }

    /// The current value.
    pub fn get(&self) -> HealthInfo {
        self.tx.borrow().clone()
    }

    /// Whether the status is healthy.
    pub fn is_healthy(&self) -> bool {
        self.tx.borrow().status == HealthStatus::Healthy
    }

    /// Sets the status, message and error; `last_checked` becomes now.
    pub fn set(&self, status: HealthStatus, message: impl Into<String>, error: Option<String>) {
        let info = HealthInfo {
            status,
            last_checked: SystemTime::now(),
            message: message.into(),
            error,
        };
        tracing::debug!(status = %status, "health set");
        self.tx.send_replace(info);
    }

    /// Runs `checker` and records the outcome: healthy, or unhealthy with the
    /// error. Returns the checker's error, if any.
    ///
    /// # Errors
    /// What the checker returned.
    pub async fn check(&self, checker: &dyn HealthChecker) -> Result<(), HealthCheckError> {
        match checker.check().await {
            Ok(()) => {
                self.set(
                    HealthStatus::Healthy,
                    format!("{} ok", checker.name()),
                    None,
                );
                Ok(())
            }
            Err(e) => {
                self.set(
                    HealthStatus::Unhealthy,
                    format!("{} failed", checker.name()),
                    Some(e.to_string()),
                );
                Err(e)
            }
        }
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<HealthInfo> {
        self.tx.subscribe()
    }

    /// Sets the status of one of the node's gRPC services, by its gRPC name
    /// (`greeter.v1.Greeter`): `grpc.health.v1` reports it under that name
    /// (as not serving whenever the node itself is unhealthy).
    pub fn set_service(&self, grpc_name: impl Into<String>, status: HealthStatus) {
        let name = grpc_name.into();
        tracing::debug!(service = %name, status = %status, "service health set");
        self.services.send_modify(|m| {
            m.insert(name, status);
        });
    }

    /// The status set for a gRPC service, if any.
    pub fn service(&self, grpc_name: &str) -> Option<HealthStatus> {
        self.services.borrow().get(grpc_name).copied()
    }

    /// A receiver that sees every change of the services' statuses.
    pub fn subscribe_services(
        &self,
    ) -> watch::Receiver<std::collections::BTreeMap<String, HealthStatus>> {
        self.services.subscribe()
    }
}
