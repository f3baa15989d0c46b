//! The certificate directory: layout, first-run generation, safe writes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use aegis_id::NodeId;

use crate::ca::{CA_VALIDITY, NODE_VALIDITY};
use crate::{CertAuthority, TlsConfig, TlsError, TlsOptions, Validity, load_tls_config};

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
        }
    }

    /// Refuses to create a CA: a directory without one is an error (a typo
    /// in the path would otherwise start a mesh of its own). Default: a
    /// missing CA is created, with a warning naming the directory.
    pub fn require_existing_ca(mut self, require: bool) -> Self {
        self.require_ca = require;
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

    /// Whether the certificate at `path` is expired or past two thirds of
    /// its life (an unreadable one is left to the load to report).
    fn due_for_renewal(&self, path: &Path) -> bool {
        let Ok(Some(pem)) = read_text(path, "node certificate") else {
            return false;
        };
        let origin = path.display().to_string();
        let Some(der) = crate::pem::certs(pem.as_bytes(), &origin)
            .ok()
            .and_then(|c| c.into_iter().next())
        else {
            return false;
        };
        let Ok(info) = crate::CertInfo::from_der(&der) else {
            return false;
        };
        let life = info
            .not_after
            .duration_since(info.not_before)
            .unwrap_or_default();
        let renew_at = info.not_before + life * 2 / 3;
        std::time::SystemTime::now() >= renew_at
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
        for problem in self.permission_problems(id.as_str()) {
            tracing::warn!(node_id = %id, "{problem}");
        }
        let cert_path = self.node_cert_path(&id);
        if self.ca_cert_path().exists()
            && cert_path.exists()
            && self.node_key_path(&id).exists()
            && !self.due_for_renewal(&cert_path)
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
            (true, true) if self.due_for_renewal(&cert_path) => {
                // Expired, or past two thirds of its life: renewed for the
                // same key when this directory can issue; otherwise left
                // for the load to report (expired) or to run out.
                if let Some(ca) = &ca {
                    let origin = key_path.display().to_string();
                    let key_pem = read_text(&key_path, "node private key")?.unwrap_or_default();
                    let issued = ca.issue_for_key(
                        &id,
                        &key_pem,
                        &origin,
                        Validity::from_now(NODE_VALIDITY),
                    )?;
                    write_atomic(&cert_path, issued.cert_pem.as_bytes(), CERT_MODE)?;
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
                let validity = Validity::from_now(NODE_VALIDITY);
                if key_exists {
                    // The key stays as it is: the certificate is issued for it.
                    let origin = key_path.display().to_string();
                    let key_pem = read_text(&key_path, "node private key")?.unwrap_or_default();
                    let issued = ca.issue_for_key(&id, &key_pem, &origin, validity)?;
                    write_atomic(&cert_path, issued.cert_pem.as_bytes(), CERT_MODE)?;
                    tracing::info!(node_id = %id, dir = %self.root.display(), "issued a node certificate for the existing key");
                } else {
                    let issued = ca.issue(&id, validity)?;
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
        let ca = CertAuthority::generate(Validity::from_now(CA_VALIDITY))?;
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
