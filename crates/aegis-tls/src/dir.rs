//! The certificate directory: layout, first-run generation, safe writes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aegis_id::NodeId;
use rustls_pki_types::CertificateDer;

use crate::ca::{CA_VALIDITY, NODE_VALIDITY};
use crate::config::verify_chain;
use crate::info::rfc3339;
use crate::{CertAuthority, CertInfo, TlsConfig, TlsError, TlsOptions, Validity, load_tls_config};

const CA_CERT: &str = "ca-cert.pem";
const CA_KEY: &str = "ca-key.pem";
const LOCK: &str = ".aegis.lock";
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

/// A certificate directory in the layout the reference implementation uses:
/// `ca-cert.pem`, `ca-key.pem`, `{id}-cert.pem`, `{id}-key.pem`.
///
/// Keys are written with mode 0600 (from their first byte: the file is
/// created with that mode), the directory is created with mode 0700, every
/// file is written to a temporary name and renamed into place, and
/// generation holds an exclusive lock on `.aegis.lock`, so that processes
/// starting together on a fresh directory end up with one CA.
#[derive(Debug, Clone)]
pub struct CertDir {
    root: PathBuf,
    require_ca: bool,
    strict_modes: bool,
    node_validity: Duration,
    ca_validity: Duration,
}

/// Why a node certificate is due to be issued anew (see
/// [`CertDir::renewal_due`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// It has expired.
    Expired,
    /// It is past the given share of its life.
    Aging,
    /// Another CA signs now (a rollover): it was issued by one that is
    /// being retired.
    NewCa,
}

/// Whether a certificate is expired or past `fraction` of its life.
fn aged(info: &CertInfo, fraction: f64) -> Option<Renewal> {
    let now = SystemTime::now();
    if now > info.not_after {
        Some(Renewal::Expired)
    } else if now >= renewal_time(info, fraction) {
        Some(Renewal::Aging)
    } else {
        None
    }
}

/// When a certificate reaches `fraction` (0..=1) of its life.
pub fn renewal_time(info: &CertInfo, fraction: f64) -> SystemTime {
    let life = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or_default();
    info.not_before + life.mul_f64(fraction.clamp(0.0, 1.0))
}

/// What [`CertDir::ensure_node`] had to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Created {
    /// The CA was generated.
    pub ca: bool,
    /// The node certificate and key were issued.
    pub node: bool,
}

impl CertDir {
    /// A directory at `root` (not touched until used).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            require_ca: false,
            strict_modes: false,
            node_validity: NODE_VALIDITY,
            ca_validity: CA_VALIDITY,
        }
    }

    /// Lifetime of node certificates this directory issues for the first
    /// time (default [`NODE_VALIDITY`], 90 days). A renewed certificate
    /// keeps the lifetime of the one it replaces.
    pub fn with_node_validity(mut self, lifetime: Duration) -> Self {
        self.node_validity = lifetime;
        self
    }

    /// Lifetime of a CA this directory creates (default [`CA_VALIDITY`],
    /// 365 days).
    pub fn with_ca_validity(mut self, lifetime: Duration) -> Self {
        self.ca_validity = lifetime;
        self
    }

    /// Whether this directory holds the CA key, so that it can issue and
    /// renew node certificates.
    pub fn can_issue(&self) -> bool {
        self.ca_key_path().exists()
    }

    /// What the node certificate of `id` says.
    ///
    /// # Errors
    /// The file is missing, unreadable or not a certificate.
    pub fn node_cert_info(&self, id: &str) -> Result<CertInfo, TlsError> {
        let id = NodeId::new(id)?;
        let path = self.node_cert_path(&id);
        read_cert_infos(&path, "node certificate")?
            .into_iter()
            .next()
            .map(|(info, _)| info)
            .ok_or(TlsError::Missing {
                what: "node certificate",
                path,
            })
    }

    /// The CAs of `ca-cert.pem` (several during a rollover), each with its
    /// DER.
    ///
    /// # Errors
    /// The file is missing, unreadable or holds no certificate.
    pub fn ca_bundle(&self) -> Result<Vec<(CertInfo, CertificateDer<'static>)>, TlsError> {
        read_cert_infos(&self.ca_cert_path(), "CA certificate")
    }

    /// The CA that signs here: the one of the bundle whose key is
    /// `ca-key.pem`; `None` without a CA key.
    ///
    /// # Errors
    /// Unreadable files, or a key that belongs to none of the bundle's CAs.
    pub fn signing_ca(&self) -> Result<Option<CertInfo>, TlsError> {
        match self.load_ca()? {
            Some(Some(ca)) => CertInfo::from_der(ca.cert_der()).map(Some),
            _ => Ok(None),
        }
    }

    /// Whether the certificate of `id` is due to be issued anew: expired,
    /// past `fraction` of its life, or (when this directory can issue) not
    /// signed by the CA that signs now. `None` when it is fine.
    ///
    /// # Errors
    /// Unreadable or invalid files.
    pub fn renewal_due(&self, id: &str, fraction: f64) -> Result<Option<Renewal>, TlsError> {
        if let Some(due) = aged(&self.node_cert_info(id)?, fraction) {
            return Ok(Some(due));
        }
        let now = SystemTime::now();
        if let Some(Some(ca)) = self.load_ca()? {
            let path = self.node_cert_path(&NodeId::new(id)?);
            let chain = read_certs(&path, "node certificate")?;
            if verify_chain(&chain, std::slice::from_ref(ca.cert_der()), now).is_err() {
                return Ok(Some(Renewal::NewCa));
            }
        }
        Ok(None)
    }

    /// Issues the certificate of `id` anew, now: for its existing key, from
    /// the CA that signs here, as long-lived as the certificate it replaces
    /// (or [`CertDir::with_node_validity`] if that one is unreadable), and
    /// written atomically. Running nodes that watch the directory pick it
    /// up.
    ///
    /// # Errors
    /// No CA key here, no key for `id`, or I/O errors naming the path.
    pub fn renew_node(&self, id: &str) -> Result<CertInfo, TlsError> {
        let id = NodeId::new(id)?;
        let _lock = self.lock()?;
        let info = self.reissue(&self.issuing_ca()?, &id)?;
        tracing::info!(node_id = %id, serial = %info.serial_hex(), not_after = %rfc3339(info.not_after), "renewed the node certificate");
        Ok(info)
    }

    /// Issues `id`'s certificate for its existing key, as long-lived as the
    /// certificate it replaces (or [`CertDir::with_node_validity`] when
    /// there is none to read), and writes it. The caller holds the lock.
    fn reissue(&self, ca: &CertAuthority, id: &NodeId) -> Result<CertInfo, TlsError> {
        let key_path = self.node_key_path(id);
        let key_pem =
            read_text(&key_path, "node private key")?.ok_or_else(|| TlsError::Missing {
                what: "node private key (a certificate is issued for its existing key)",
                path: key_path.clone(),
            })?;
        let validity = match self.node_cert_info(id.as_str()) {
            Ok(old) => Validity::like(
                old.not_after
                    .duration_since(old.not_before)
                    .unwrap_or(self.node_validity),
            ),
            Err(_) => Validity::from_now(self.node_validity),
        };
        let origin = key_path.display().to_string();
        let issued = ca.issue_for_key(id, &key_pem, &origin, validity)?;
        write_atomic(
            &self.node_cert_path(id),
            issued.cert_pem.as_bytes(),
            CERT_MODE,
        )?;
        CertInfo::from_der(&issued.cert_der)
    }

    /// Starts a CA rollover: generates a new CA, makes `ca-cert.pem` the
    /// bundle of the old CA(s) and the new one (so every node trusts both),
    /// then makes the new key `ca-key.pem`, so that certificates issued from
    /// now on come from the new CA. Returns the new CA.
    ///
    /// Finish with [`CertDir::finish_ca_rotation`] once every node
    /// certificate has been issued by the new CA.
    ///
    /// # Errors
    /// No CA here yet, a rollover already in progress (the bundle holds
    /// several CAs), or I/O errors naming the path.
    pub fn rotate_ca(&self) -> Result<CertInfo, TlsError> {
        let _lock = self.lock()?;
        let bundle = self.ca_bundle()?;
        if bundle.len() > 1 {
            return Err(TlsError::Inconsistent {
                path: self.ca_cert_path(),
                reason: format!(
                    "it already holds {} CAs: a rollover is in progress; finish it first",
                    bundle.len()
                ),
            });
        }
        let ca = CertAuthority::generate(Validity::from_now(self.ca_validity))?;
        let mut text = String::new();
        for (_, der) in &bundle {
            text.push_str(&crate::pem::encode_cert(der));
        }
        text.push_str(ca.cert_pem());
        // Trust first, then the key: a node that reads between the two
        // writes still finds the key's certificate in the bundle.
        write_atomic(&self.ca_cert_path(), text.as_bytes(), CERT_MODE)?;
        write_atomic(&self.ca_key_path(), ca.key_pem().as_bytes(), KEY_MODE)?;
        let info = CertInfo::from_der(ca.cert_der())?;
        tracing::warn!(dir = %self.root.display(), ca = %info.common_name.as_deref().unwrap_or("?"), "CA rollover started: ca-cert.pem holds the old and the new CA; node certificates are issued by the new one from now on");
        Ok(info)
    }

    /// Ends a CA rollover: drops from `ca-cert.pem` every CA but the one
    /// that signs. Refuses while a node certificate of this directory
    /// still comes from a CA being dropped (nodes holding it could no
    /// longer connect), unless `force`. Returns the CAs dropped (none when
    /// no rollover was in progress).
    ///
    /// # Errors
    /// No CA key here, node certificates not yet renewed (each named), or
    /// I/O errors.
    pub fn finish_ca_rotation(&self, force: bool) -> Result<Vec<CertInfo>, TlsError> {
        let _lock = self.lock()?;
        let ca = self.issuing_ca()?;
        let bundle = self.ca_bundle()?;
        if bundle.len() <= 1 {
            return Ok(Vec::new());
        }
        let now = SystemTime::now();
        let stale: Vec<String> = self
            .node_ids()
            .into_iter()
            .filter(|id| {
                let path = self.node_cert_path_unchecked(id);
                read_certs(&path, "node certificate").is_ok_and(|chain| {
                    verify_chain(&chain, std::slice::from_ref(ca.cert_der()), now).is_err()
                })
            })
            .collect();
        if !stale.is_empty() && !force {
            return Err(TlsError::Inconsistent {
                path: self.root.clone(),
                reason: format!(
                    "the certificates of {} are not from the new CA yet; wait for their nodes to renew them, or renew them now (aegis certs renew --dir {} {})",
                    stale.join(", "),
                    self.root.display(),
                    stale.join(" ")
                ),
            });
        }
        let signing = ca.cert_der().clone();
        let dropped: Vec<CertInfo> = bundle
            .into_iter()
            .filter(|(_, der)| *der != signing)
            .map(|(info, _)| info)
            .collect();
        write_atomic(&self.ca_cert_path(), ca.cert_pem().as_bytes(), CERT_MODE)?;
        tracing::warn!(dir = %self.root.display(), dropped = dropped.len(), "CA rollover finished: ca-cert.pem holds only the CA that signs");
        Ok(dropped)
    }

    /// The CA of the bundle that issued the certificate of `id` (checked at
    /// a moment inside the certificate's validity, so an expired one still
    /// names its issuer); `None` when none of them did.
    ///
    /// # Errors
    /// Unreadable or invalid files.
    pub fn issuer_of(&self, id: &str) -> Result<Option<CertInfo>, TlsError> {
        let id = NodeId::new(id)?;
        let path = self.node_cert_path(&id);
        let chain = read_certs(&path, "node certificate")?;
        let info = CertInfo::parse(&chain[0], &path.display().to_string())?;
        let at = info.not_before
            + (info
                .not_after
                .duration_since(info.not_before)
                .unwrap_or_default()
                / 2);
        Ok(self
            .ca_bundle()?
            .into_iter()
            .find(|(_, der)| verify_chain(&chain, std::slice::from_ref(der), at).is_ok())
            .map(|(ca, _)| ca))
    }

    /// The IDs of the node certificates in this directory.
    pub fn node_ids(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| name.strip_suffix("-cert.pem").map(str::to_owned))
            .filter(|id| id != "ca" && NodeId::new(id).is_ok())
            .collect();
        ids.sort();
        ids
    }

    /// The CA with its key, or an error naming the missing key.
    fn issuing_ca(&self) -> Result<CertAuthority, TlsError> {
        match self.load_ca()? {
            Some(Some(ca)) => Ok(ca),
            Some(None) => Err(TlsError::Missing {
                what: "CA private key (needed to issue a node certificate)",
                path: self.ca_key_path(),
            }),
            None => Err(TlsError::Missing {
                what: "mesh CA certificate",
                path: self.ca_cert_path(),
            }),
        }
    }

    /// Refuses to create a CA: a directory without one is an error (a typo
    /// in the path would otherwise start a mesh of its own). Default: a
    /// missing CA is created, with a warning naming the directory.
    pub fn require_existing_ca(mut self, require: bool) -> Self {
        self.require_ca = require;
        self
    }

    /// Refuses to use keys that others may read, or a directory that others
    /// may write ([`TlsError::LoosePermissions`], naming each and its
    /// `chmod`). Default: a warning for each, and the node starts.
    pub fn refuse_loose_permissions(mut self, refuse: bool) -> Self {
        self.strict_modes = refuse;
        self
    }

    /// Keys or a directory that others may read or write, each named with
    /// the fix (`chmod 600 …`, `chmod 700 …`). Files that do not exist are
    /// not problems.
    pub fn permission_problems(&self, id: &str) -> Vec<String> {
        let mode = |p: &Path| fs::metadata(p).ok().map(|m| m.permissions().mode() & 0o777);
        let mut problems = Vec::new();
        if let Some(m) = mode(&self.root)
            && m & 0o022 != 0
        {
            problems.push(format!(
                "the certificate directory {} is writable by others (mode {m:04o}): chmod 700 {}",
                self.root.display(),
                self.root.display()
            ));
        }
        for key in [self.ca_key_path(), self.node_key_path_unchecked(id)] {
            if let Some(m) = mode(&key)
                && m & 0o077 != 0
            {
                problems.push(format!(
                    "the private key {} is readable by others (mode {m:04o}): chmod 600 {}",
                    key.display(),
                    key.display()
                ));
            }
        }
        problems
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Whether `id`'s certificate is expired or past two thirds of its life
    /// (an unreadable one is left to the load to report). A certificate of
    /// a CA that no longer signs is not renewed at start: the running node
    /// waits for the rollover grace, so that every node trusts the new CA
    /// first.
    fn aged_at_start(&self, id: &NodeId) -> bool {
        self.node_cert_info(id.as_str())
            .is_ok_and(|info| aged(&info, 2.0 / 3.0).is_some())
    }

    /// `ca-cert.pem`.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.root.join(CA_CERT)
    }

    /// `ca-key.pem`.
    pub fn ca_key_path(&self) -> PathBuf {
        self.root.join(CA_KEY)
    }

    /// `{id}-cert.pem`.
    pub fn node_cert_path(&self, id: &NodeId) -> PathBuf {
        self.node_cert_path_unchecked(id.as_str())
    }

    /// `{id}-key.pem`.
    pub fn node_key_path(&self, id: &NodeId) -> PathBuf {
        self.node_key_path_unchecked(id.as_str())
    }

    pub(crate) fn node_cert_path_unchecked(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}-cert.pem"))
    }

    pub(crate) fn node_key_path_unchecked(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}-key.pem"))
    }

    /// Makes sure the CA and the certificate of `id` exist, creating what is
    /// missing, and says what it created. Existing files are never replaced.
    ///
    /// # Errors
    /// [`TlsError::InvalidNodeId`] before anything touches the disk; I/O and
    /// generation errors naming the path.
    pub fn ensure_node(&self, id: &str) -> Result<Created, TlsError> {
        let id = NodeId::new(id)?;
        let problems = self.permission_problems(id.as_str());
        if self.strict_modes && !problems.is_empty() {
            return Err(TlsError::LoosePermissions {
                path: self.root.clone(),
                problems,
            });
        }
        for problem in problems {
            tracing::warn!(node_id = %id, "{problem}");
        }
        let cert_path = self.node_cert_path(&id);
        if self.ca_cert_path().exists()
            && cert_path.exists()
            && self.node_key_path(&id).exists()
            && !self.aged_at_start(&id)
        {
            return Ok(Created::default());
        }
        if self.require_ca && !self.ca_cert_path().exists() {
            return Err(TlsError::Missing {
                what: "mesh CA certificate (require_existing_ca is set, so none is created)",
                path: self.ca_cert_path(),
            });
        }
        self.create_dir()?;
        let _lock = self.lock()?;
        // Re-check under the lock: another process may have finished first.
        let mut created = Created::default();
        let ca = match self.load_ca()? {
            Some(ca) => ca,
            None if self.require_ca => {
                return Err(TlsError::Missing {
                    what: "mesh CA certificate (require_existing_ca is set, so none is created)",
                    path: self.ca_cert_path(),
                });
            }
            None => {
                created.ca = true;
                self.generate_ca()?
            }
        };
        let key_path = self.node_key_path(&id);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) if self.aged_at_start(&id) => {
                // Expired, or past two thirds of its life: renewed for the
                // same key when this directory can issue; otherwise left
                // for the load to report (expired) or to run out.
                if let Some(ca) = &ca {
                    self.reissue(ca, &id)?;
                    created.node = true;
                    tracing::info!(node_id = %id, dir = %self.root.display(), "renewed the node certificate (it was expired or past two thirds of its life)");
                } else {
                    tracing::warn!(node_id = %id, path = %cert_path.display(), "the node certificate is expired or past two thirds of its life, and this directory holds no CA key to renew it");
                }
            }
            (true, true) => {}
            (true, false) => {
                // Never replace a file: the certificate may be in use, or the
                // key only misplaced.
                return Err(TlsError::Inconsistent {
                    path: self.root.clone(),
                    reason: format!(
                        "{} exists but its key {} does not; restore the key, or remove the certificate to have both issued anew",
                        cert_path.display(),
                        key_path.display()
                    ),
                });
            }
            (false, key_exists) => {
                let ca = ca.ok_or_else(|| TlsError::Missing {
                    what: "CA private key (needed to issue a node certificate)",
                    path: self.ca_key_path(),
                })?;
                if key_exists {
                    // The key stays as it is: the certificate is issued for it.
                    self.reissue(&ca, &id)?;
                    tracing::info!(node_id = %id, dir = %self.root.display(), "issued a node certificate for the existing key");
                } else {
                    let issued = ca.issue(&id, Validity::from_now(self.node_validity))?;
                    // Key first: a certificate on disk always has its key beside it.
                    write_atomic(&key_path, issued.key_pem.as_bytes(), KEY_MODE)?;
                    write_atomic(&cert_path, issued.cert_pem.as_bytes(), CERT_MODE)?;
                    tracing::info!(node_id = %id, dir = %self.root.display(), "issued node certificate");
                }
                created.node = true;
            }
        }
        Ok(created)
    }

    /// The CA, if its certificate exists: `Some(Some(ca))` with its key,
    /// `Some(None)` when only the certificate is there (a node that may use
    /// but not issue certificates). `None` when the directory has no CA.
    fn load_ca(&self) -> Result<Option<Option<CertAuthority>>, TlsError> {
        let cert_path = self.ca_cert_path();
        let key_path = self.ca_key_path();
        let cert_pem = match read_text(&cert_path, "CA certificate")? {
            Some(pem) => pem,
            None if key_path.exists() => {
                return Err(TlsError::Inconsistent {
                    path: self.root.clone(),
                    reason: format!(
                        "{} exists but {} does not; restore the certificate or remove the key",
                        key_path.display(),
                        cert_path.display()
                    ),
                });
            }
            None => return Ok(None),
        };
        let Some(key_pem) = read_text(&key_path, "CA private key")? else {
            return Ok(Some(None));
        };
        let origin = self.root.display().to_string();
        CertAuthority::from_pem(&cert_pem, &key_pem, &origin).map(|ca| Some(Some(ca)))
    }

    fn generate_ca(&self) -> Result<Option<CertAuthority>, TlsError> {
        let ca = CertAuthority::generate(Validity::from_now(self.ca_validity))?;
        write_atomic(&self.ca_key_path(), ca.key_pem().as_bytes(), KEY_MODE)?;
        write_atomic(&self.ca_cert_path(), ca.cert_pem().as_bytes(), CERT_MODE)?;
        tracing::warn!(
            dir = %self.root.display(),
            "created a new mesh CA: every node of one mesh must use this CA (the same certificate directory, or a copy of ca-cert.pem and ca-key.pem); require_existing_ca refuses to create one"
        );
        Ok(Some(ca))
    }

    fn create_dir(&self) -> Result<(), TlsError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&self.root)
            .map_err(|source| TlsError::Write {
                path: self.root.clone(),
                source,
            })
    }

    fn lock(&self) -> Result<File, TlsError> {
        let path = self.root.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(KEY_MODE)
            .open(&path)
            .map_err(|source| TlsError::Lock {
                path: path.clone(),
                source,
            })?;
        file.lock()
            .map_err(|source| TlsError::Lock { path, source })?;
        Ok(file)
    }
}

/// Loads the TLS identity of `node_id` from `cert_dir`, generating on first
/// run whatever is missing: the CA, then the node certificate. The result is
/// checked as [`load_tls_config`] checks (chain, validity, key match).
///
/// ```
/// let dir = std::env::temp_dir().join(format!("aegis-doc-{}", std::process::id()));
/// let tls = aegis_tls::load_or_generate_tls("node-1", &dir)?;
/// assert_eq!(tls.node_id().as_str(), "node-1");
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), aegis_tls::TlsError>(())
/// ```
///
/// # Errors
/// [`TlsError::InvalidNodeId`] before anything touches the disk; otherwise
/// the first file that is missing, unreadable or fails a check.
pub fn load_or_generate_tls(
    node_id: &str,
    cert_dir: impl AsRef<Path>,
) -> Result<TlsConfig, TlsError> {
    let dir = CertDir::new(cert_dir.as_ref());
    dir.ensure_node(node_id)?;
    load_tls_config(&TlsOptions::from_cert_dir(cert_dir, node_id))
}

/// The certificates of a PEM file.
fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read_text(path, what)?.ok_or_else(|| TlsError::Missing {
        what,
        path: path.to_owned(),
    })?;
    crate::pem::certs(text.as_bytes(), &path.display().to_string())
}

/// The certificates of a PEM file, each parsed.
fn read_cert_infos(
    path: &Path,
    what: &'static str,
) -> Result<Vec<(CertInfo, CertificateDer<'static>)>, TlsError> {
    let origin = path.display().to_string();
    read_certs(path, what)?
        .into_iter()
        .map(|der| CertInfo::parse(&der, &origin).map(|info| (info, der)))
        .collect()
}

/// Reads a text file; `None` if it does not exist.
fn read_text(path: &Path, what: &'static str) -> Result<Option<String>, TlsError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Read {
            what,
            origin: path.display().to_string(),
            source,
        }),
    }
}

/// Writes `data` to a fresh temporary file created with `mode`, syncs it,
/// and renames it over `path`; a crash leaves either the old file or the
/// new one, never half of one.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode further; never widen it, but
        // make sure a certificate stays readable.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}
