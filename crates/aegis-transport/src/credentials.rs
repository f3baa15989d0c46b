//! The node's credentials as a value that changes, and the watcher that
//! keeps them fresh from the certificate files.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aegis_tls::rustls::{ClientConfig, ServerConfig};
use aegis_tls::{CertDir, CertInfo, CertificateSource, NodeId, Renewal, TlsConfig, TlsOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::TransportError;

/// The node's certificate, key and trusted CAs, shared by everything that
/// handshakes: the accept loop takes the current server configuration for
/// each new connection, every dialler the current client configuration for
/// each new connection, and open connections keep the ones they started
/// with. [`Credentials::replace`] publishes new ones (a renewed certificate,
/// a new CA bundle) without a restart.
///
/// Cloning is cheap; clones share the value.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("aegis-creds-doc-{}", std::process::id()));
/// let tls = aegis_tls::load_or_generate_tls("node-1", &dir)?;
/// let credentials = aegis_transport::Credentials::new(tls.clone());
/// let mut changes = credentials.subscribe();
/// credentials.replace(tls)?; // the same node: accepted
/// assert!(changes.has_changed()?);
/// assert_eq!(credentials.node_id().as_str(), "node-1");
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<watch::Sender<TlsConfig>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Credentials")
            .field(&*self.inner.borrow())
            .finish()
    }
}

impl Credentials {
    /// Credentials that start as `tls`.
    pub fn new(tls: TlsConfig) -> Self {
        Self {
            inner: Arc::new(watch::Sender::new(tls)),
        }
    }

    /// The configuration in use now.
    pub fn current(&self) -> TlsConfig {
        self.inner.borrow().clone()
    }

    /// The node ID the certificates name (it never changes).
    pub fn node_id(&self) -> NodeId {
        self.inner.borrow().node_id().clone()
    }

    /// What the current certificate says.
    pub fn cert_info(&self) -> CertInfo {
        self.inner.borrow().cert_info().clone()
    }

    /// The rustls server configuration for a connection accepted now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.inner.borrow().server_config()
    }

    /// The rustls client configuration for a connection made now.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.inner.borrow().client_config()
    }

    /// Publishes new credentials: new connections use them from now on.
    ///
    /// # Errors
    /// [`TransportError::OtherNode`] when `tls` names another node: a node's
    /// identity never changes while it runs.
    pub fn replace(&self, tls: TlsConfig) -> Result<(), TransportError> {
        let current = self.node_id();
        if *tls.node_id() != current {
            return Err(TransportError::OtherNode {
                current: current.to_string(),
                new: tls.node_id().to_string(),
            });
        }
        let info = tls.cert_info();
        tracing::info!(node_id = %current, serial = %info.serial_hex(), not_after = ?unix(info.not_after), cas = tls.ca_certs().len(), "new credentials in use for new connections");
        set_gauges(info, None);
        self.inner.send_replace(tls);
        Ok(())
    }

    /// A receiver that sees every replacement.
    pub fn subscribe(&self) -> watch::Receiver<TlsConfig> {
        self.inner.subscribe()
    }
}

impl From<TlsConfig> for Credentials {
    fn from(tls: TlsConfig) -> Self {
        Self::new(tls)
    }
}

impl From<&TlsConfig> for Credentials {
    fn from(tls: &TlsConfig) -> Self {
        Self::new(tls.clone())
    }
}

impl From<&Credentials> for Credentials {
    fn from(credentials: &Credentials) -> Self {
        credentials.clone()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `aegis_tls_cert_not_after_seconds`, and the renewal time when known.
fn set_gauges(info: &CertInfo, renew_at: Option<SystemTime>) {
    metrics::gauge!("aegis_tls_cert_not_after_seconds").set(unix(info.not_after) as f64);
    if let Some(at) = renew_at {
        metrics::gauge!("aegis_tls_cert_renewal_seconds").set(unix(at) as f64);
    }
}

/// When and how [`CredentialsWatcher`] renews and reloads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenewalConfig {
    /// How often the files are looked at. Default: 1 s.
    pub poll_interval: Duration,
    /// Share of its life after which a node certificate is renewed, when
    /// the certificate directory holds the CA key. Default: 2/3.
    pub renew_at: f64,
    /// Share of its life after which a certificate this node cannot renew
    /// gets a warning. Default: 0.8.
    pub warn_at: f64,
    /// During a CA rollover, how long after this node first sees the new
    /// CA it waits before re-issuing its certificate from it, so that every
    /// node has picked up the bundle that trusts the new CA first.
    /// Default: 10 s.
    pub rollover_grace: Duration,
}

impl Default for RenewalConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            renew_at: 2.0 / 3.0,
            warn_at: 0.8,
            rollover_grace: Duration::from_secs(10),
        }
    }
}

/// Keeps [`Credentials`] in step with the files they came from.
///
/// Every [`RenewalConfig::poll_interval`]:
/// - when a certificate directory that holds the CA key is given, the node
///   certificate is re-issued (same key, same lifetime, written atomically)
///   once past [`RenewalConfig::renew_at`] of its life, or, during a CA
///   rollover, once the signing CA has been new for
///   [`RenewalConfig::rollover_grace`];
/// - when the certificate, key or CA file changes (renewed above, or
///   replaced by another tool: cert-manager, an operator), the files are
///   loaded and checked like at start and published. Files caught half
///   written (a certificate without its new key yet) are tried again on the
///   next look; a warning is logged if they stay wrong;
/// - a certificate nobody here can renew gets one warning at
///   [`RenewalConfig::warn_at`] of its life.
///
/// Nothing restarts; open connections keep going.
pub struct CredentialsWatcher {
    credentials: Credentials,
    options: TlsOptions,
    dir: Option<CertDir>,
    config: RenewalConfig,
    files: Option<[Vec<u8>; 3]>,
    /// The CA files as of the last full look at the directory.
    ca_seen: Option<CaSeen>,
    new_ca_since: Option<([u8; 32], Instant)>,
    warned_expiry: Option<[u8; 32]>,
    failure: Option<String>,
}

impl std::fmt::Debug for CredentialsWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsWatcher")
            .field("node_id", &self.credentials.node_id())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The CA files as a watcher last judged them: the bundle's bytes, and the
/// key's size and modification time (the key itself is read only when a
/// certificate is issued).
#[derive(Debug, Clone, PartialEq, Eq)]
struct CaSeen {
    bundle: Option<Vec<u8>>,
    key: Option<(u64, Option<SystemTime>)>,
}

/// What one look at the files did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// The node certificate was re-issued, and why.
    pub renewed: Option<Renewal>,
    /// New credentials were published.
    pub reloaded: bool,
    /// The certificate, which nothing here can renew, passed
    /// [`RenewalConfig::warn_at`] of its life: warned about (once per
    /// certificate).
    pub warned: bool,
}

impl CredentialsWatcher {
    /// Watches the files of `options` (a [`CertificateSource::File`]
    /// source; other sources cannot change and are only checked for
    /// expiry) for `credentials`.
    pub fn new(credentials: Credentials, options: TlsOptions) -> Self {
        let files = read_files(&options);
        Self {
            credentials,
            options,
            dir: None,
            config: RenewalConfig::default(),
            files,
            ca_seen: None,
            new_ca_since: None,
            warned_expiry: None,
            failure: None,
        }
    }

    /// Watches the node's files in `dir`, renewing the certificate there
    /// when the directory holds the CA key.
    pub fn for_cert_dir(credentials: Credentials, dir: CertDir) -> Self {
        let options = TlsOptions::from_cert_dir(dir.path(), credentials.node_id().as_str());
        let mut watcher = Self::new(credentials, options);
        watcher.dir = Some(dir);
        watcher
    }

    /// Other timings.
    pub fn with_config(mut self, config: RenewalConfig) -> Self {
        self.config = config;
        self
    }

    /// When the current certificate is due for renewal (or for the
    /// warning, when nothing here can renew it).
    pub fn renewal_time(&self) -> SystemTime {
        aegis_tls::renewal_time(&self.credentials.cert_info(), self.renewal_share())
    }

    /// The share of its life at which the certificate is renewed, or, when
    /// nothing here can renew it, warned about.
    pub fn renewal_share(&self) -> f64 {
        if self.can_renew() {
            self.config.renew_at
        } else {
            self.config.warn_at
        }
    }

    fn can_renew(&self) -> bool {
        self.dir.as_ref().is_some_and(CertDir::can_issue)
    }

    /// Looks once: renews if due, reloads if the files changed. Blocking
    /// (file I/O, signing); [`CredentialsWatcher::spawn`] runs it on
    /// Tokio's blocking threads.
    pub fn check(&mut self) -> Checked {
        let mut checked = Checked::default();
        let mut files = read_files(&self.options);
        if let Some(dir) = self.dir.clone().filter(CertDir::can_issue) {
            let bundle = files.as_ref().map(|[_, _, ca]| ca.as_slice());
            checked.renewed = self.renew(&dir, bundle);
            if checked.renewed.is_some() {
                files = read_files(&self.options);
            }
        }
        if files.is_some() && files != self.files {
            checked.reloaded = self.reload(files);
        }
        checked.warned = self.warn_expiry();
        set_gauges(&self.credentials.cert_info(), Some(self.renewal_time()));
        checked
    }

    fn renew(&mut self, dir: &CertDir, bundle: Option<&[u8]>) -> Option<Renewal> {
        // The directory is read (and its CA key parsed) only when something
        // can be due: the certificate in use reached its renewal time, the
        // CA bundle or key changed (a rollover), or a new CA's grace runs.
        let ca = CaSeen {
            bundle: bundle.map(<[u8]>::to_vec),
            key: std::fs::metadata(dir.ca_key_path())
                .ok()
                .map(|m| (m.len(), m.modified().ok())),
        };
        let aging = SystemTime::now() >= self.renewal_time();
        if !aging && self.new_ca_since.is_none() && self.ca_seen.as_ref() == Some(&ca) {
            return None;
        }
        let id = self.credentials.node_id();
        let due = match dir.renewal_due(id.as_str(), self.config.renew_at) {
            Ok(due) => {
                self.ca_seen = Some(ca);
                if due.is_none() {
                    self.new_ca_since = None;
                }
                due
            }
            Err(e) => {
                self.fail(format!(
                    "cannot tell whether the node certificate needs renewal: {e}"
                ));
                return None;
            }
        };
        if due == Some(Renewal::NewCa) {
            // Wait until the bundle with the new CA has reached everyone.
            let signing = dir
                .signing_ca()
                .ok()
                .flatten()
                .map(|ca| ca.fingerprint_sha256)?;
            let since = match self.new_ca_since {
                Some((fp, since)) if fp == signing => since,
                _ => {
                    tracing::info!(node_id = %id, grace = ?self.config.rollover_grace, "a new CA signs in the certificate directory; the node certificate will be re-issued from it after the rollover grace");
                    self.new_ca_since = Some((signing, Instant::now()));
                    return None;
                }
            };
            if since.elapsed() < self.config.rollover_grace {
                return None;
            }
        }
        let reason = due?;
        match dir.renew_node(id.as_str()) {
            Ok(_) => {
                metrics::counter!("aegis_tls_renewals_total", "result" => "ok").increment(1);
                Some(reason)
            }
            Err(e) => {
                metrics::counter!("aegis_tls_renewals_total", "result" => "error").increment(1);
                self.fail(format!(
                    "cannot renew the node certificate ({reason:?}): {e}"
                ));
                None
            }
        }
    }

    fn reload(&mut self, files: Option<[Vec<u8>; 3]>) -> bool {
        let loaded = aegis_tls::load_tls_config(&self.options)
            .map_err(|e| e.to_string())
            .and_then(|tls| self.credentials.replace(tls).map_err(|e| e.to_string()));
        match loaded {
            Ok(()) => {
                metrics::counter!("aegis_tls_reloads_total", "result" => "ok").increment(1);
                self.files = files;
                self.failure = None;
                true
            }
            Err(e) => {
                metrics::counter!("aegis_tls_reloads_total", "result" => "error").increment(1);
                self.fail(format!(
                    "the changed certificate files were not taken (the current ones stay in use): {e}"
                ));
                false
            }
        }
    }

    /// Logs a failure: at debug the first time (files are often caught
    /// half replaced), as a warning when it is seen again.
    fn fail(&mut self, message: String) {
        let id = self.credentials.node_id();
        if self.failure.as_deref() == Some(message.as_str()) {
            tracing::warn!(node_id = %id, "{message}");
        } else {
            tracing::debug!(node_id = %id, "{message}");
            self.failure = Some(message);
        }
    }

    fn warn_expiry(&mut self) -> bool {
        if self.can_renew() {
            return false;
        }
        let info = self.credentials.cert_info();
        if self.warned_expiry == Some(info.fingerprint_sha256)
            || SystemTime::now() < aegis_tls::renewal_time(&info, self.config.warn_at)
        {
            return false;
        }
        self.warned_expiry = Some(info.fingerprint_sha256);
        tracing::warn!(
            node_id = %self.credentials.node_id(),
            not_after = unix(info.not_after),
            cert = %self.options.cert_file.display(),
            "the node certificate is past {:.0} % of its life and this node cannot renew it (no CA key in its directory): replace the files (the node reloads them), or renew with `aegis certs renew`",
            self.config.warn_at * 100.0
        );
        true
    }

    /// Runs [`CredentialsWatcher::check`] every poll interval until the
    /// task is aborted.
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut watcher = self;
            let mut tick = tokio::time::interval(watcher.config.poll_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let looked = tokio::task::spawn_blocking(move || {
                    let checked = watcher.check();
                    (watcher, checked)
                })
                .await;
                match looked {
                    Ok((back, _)) => watcher = back,
                    Err(e) => {
                        tracing::error!(error = %e, "the credentials watcher failed; certificates are no longer renewed or reloaded");
                        return;
                    }
                }
            }
        })
    }
}

/// The certificate, key and CA files as they are now; `None` when one
/// cannot be read (being replaced, say).
fn read_files(options: &TlsOptions) -> Option<[Vec<u8>; 3]> {
    if options.source != CertificateSource::File {
        return None;
    }
    let read = |p: &std::path::Path| std::fs::read(p).ok();
    Some([
        read(&options.cert_file)?,
        read(&options.key_file)?,
        read(&options.ca_file)?,
    ])
}
