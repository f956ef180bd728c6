//! Airlock's small secret store.
//!
//! Secrets (CA private keys, tunnel tokens, …) live either in the OS keychain
//! (Secret Service on Linux, Keychain on macOS, Credential Manager on Windows —
//! via the `keyring` crate) or, as a loud fallback, in one `0600` file per secret
//! inside a `0700` directory.
//!
//! Entries are namespaced per `AIRLOCK_HOME` ([`Namespace::for_home`]), so two
//! homes on the same machine never see each other's secrets.
//!
//! ```no_run
//! # async fn demo() -> Result<(), airlock_keystore::KeystoreError> {
//! use airlock_keystore::{open, KeystoreChoice, Namespace, Secret};
//! let home = std::path::Path::new("/home/me/.airlock");
//! let store = open(KeystoreChoice::Auto, &Namespace::for_home(home), &home.join("secrets")).await?;
//! store.set("ca-key", &Secret::from("-----BEGIN PRIVATE KEY-----…")).await?;
//! let key = store.get("ca-key").await?;
//! # Ok(()) }
//! ```

mod file;
mod keychain;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use file::FileStore;
pub use keychain::{KeychainStore, ensure_real_keychain_backend};

/// How long [`open`] waits for the keychain probe (set + get + delete) by default.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a single keychain operation may take before it is reported as hung
/// (a locked keyring can wait forever for an unlock prompt nobody sees).
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(30);

/// A secret value. Zeroized on drop; `Debug` never prints the value.
#[derive(Clone, Default)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wrap raw bytes (taken by value so no unzeroized copy is left behind).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes. Keep the borrow short; do not copy into unzeroized buffers.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as UTF-8 text (PEM keys, tokens).
    pub fn expose_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<Vec<u8>> for Secret {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self::new(s.into_bytes())
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self::new(s.as_bytes().to_vec())
    }
}

impl From<&[u8]> for Secret {
    fn from(s: &[u8]) -> Self {
        Self::new(s.to_vec())
    }
}

/// The per-`AIRLOCK_HOME` namespace: the keychain service name under which all
/// of one home's entries are stored, `airlock:<first 16 hex of sha256(abs home path)>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

impl Namespace {
    /// Namespace for an Airlock home directory. The path is made absolute
    /// (without touching the file system); pass the same path every time.
    pub fn for_home(home: &Path) -> Self {
        let abs = std::path::absolute(home).unwrap_or_else(|_| home.to_path_buf());
        let digest = Sha256::digest(abs.as_os_str().as_encoded_bytes());
        let hex = hex::encode(digest);
        Self(format!("airlock:{}", &hex[..16]))
    }

    /// The keychain service name (e.g. for `secret-tool search service <name>`).
    pub fn service(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({})", self.0)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which backend [`open`] should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeystoreChoice {
    /// The OS keychain if it answers a probe in time, else the file store (with a warning).
    #[default]
    Auto,
    /// The OS keychain, or an error saying why it is unusable.
    Keychain,
    /// Plain `0600` files (always with a warning).
    File,
}

impl std::str::FromStr for KeystoreChoice {
    type Err = KeystoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "keychain" => Ok(Self::Keychain),
            "file" => Ok(Self::File),
            other => Err(KeystoreError::InvalidChoice(other.to_string())),
        }
    }
}

/// The backend actually in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Keychain,
    File,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Keychain => "keychain",
            Backend::File => "file",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error(
        "invalid secret name {0:?}: use 1-128 characters from A-Z a-z 0-9 . _ - (not starting with '.')"
    )]
    InvalidName(String),
    #[error("invalid keystore choice {0:?}: expected auto, keychain or file")]
    InvalidChoice(String),
    #[error(
        "no D-Bus session bus, so the Secret Service keychain is unreachable ({detail}); run Airlock \
         inside a desktop session, or start one with `dbus-run-session -- <command>` and a Secret Service \
         (e.g. `gnome-keyring-daemon --unlock --components=secrets`), or use the file keystore"
    )]
    NoSessionBus { detail: String },
    #[error(
        "the D-Bus session bus answers but no Secret Service provider does ({detail}); install and \
         start one (Debian: `apt-get install gnome-keyring`, then \
         `gnome-keyring-daemon --unlock --components=secrets`), or use the file keystore"
    )]
    NoSecretService { detail: String },
    #[error(
        "the OS keychain is locked or access was refused ({detail}); unlock your login keyring \
         (e.g. `echo -n PASSWORD | gnome-keyring-daemon --unlock`, or log in to the desktop) and retry, \
         or use the file keystore"
    )]
    Locked { detail: String },
    #[error(
        "this build of Airlock has no OS keychain backend for this platform (keyring would silently \
         use an in-memory mock); use the file keystore"
    )]
    NoKeychainBackend,
    #[error("OS keychain failure: {detail}")]
    Keychain { detail: String },
    #[error(
        "OS keychain did not answer within {0:?} (a locked keyring may be waiting for an unlock prompt)"
    )]
    Timeout(Duration),
    #[error("keychain probe read back a different value than it wrote; the keychain is not usable")]
    ProbeMismatch,
    #[error("keystore file error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a directory; remove it or choose another secrets directory")]
    NotADirectory { path: PathBuf },
    #[error("keystore worker task failed: {0}")]
    Task(String),
}

impl KeystoreError {
    /// An I/O error at `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Check a secret name: 1–128 of `[A-Za-z0-9._-]`, not starting with `.`.
/// The same rule applies to both backends so a name valid for one is valid for the other.
pub fn validate_name(name: &str) -> Result<(), KeystoreError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(KeystoreError::InvalidName(name.to_string()))
    }
}

/// An opened secret store.
#[derive(Debug)]
pub enum Keystore {
    Keychain(KeychainStore),
    File(FileStore),
}

impl Keystore {
    pub fn backend(&self) -> Backend {
        match self {
            Keystore::Keychain(_) => Backend::Keychain,
            Keystore::File(_) => Backend::File,
        }
    }

    /// Read a secret; `Ok(None)` if it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<Secret>, KeystoreError> {
        match self {
            Keystore::Keychain(k) => k.get(name).await,
            Keystore::File(f) => f.get(name).await,
        }
    }

    /// Create or replace a secret.
    pub async fn set(&self, name: &str, secret: &Secret) -> Result<(), KeystoreError> {
        match self {
            Keystore::Keychain(k) => k.set(name, secret).await,
            Keystore::File(f) => f.set(name, secret).await,
        }
    }

    /// Delete a secret; `Ok(true)` if it existed, `Ok(false)` if there was nothing to delete.
    pub async fn delete(&self, name: &str) -> Result<bool, KeystoreError> {
        match self {
            Keystore::Keychain(k) => k.delete(name).await,
            Keystore::File(f) => f.delete(name).await,
        }
    }
}

/// Open the store chosen by `choice` with the default probe timeout.
///
/// * `Keychain`: probes the OS keychain (set + get + delete of a throw-away entry) and
///   returns a clear error if that fails.
/// * `Auto`: the keychain if the probe succeeds within [`DEFAULT_PROBE_TIMEOUT`],
///   otherwise the file store in `file_dir` (with a `warn!` naming the reason).
/// * `File`: the file store in `file_dir` (with a `warn!`).
pub async fn open(
    choice: KeystoreChoice,
    namespace: &Namespace,
    file_dir: &Path,
) -> Result<Keystore, KeystoreError> {
    open_with_timeout(choice, namespace, file_dir, DEFAULT_PROBE_TIMEOUT).await
}

/// [`open`] with an explicit probe timeout.
pub async fn open_with_timeout(
    choice: KeystoreChoice,
    namespace: &Namespace,
    file_dir: &Path,
    probe_timeout: Duration,
) -> Result<Keystore, KeystoreError> {
    match choice {
        KeystoreChoice::Keychain => {
            let store = KeychainStore::open(namespace, probe_timeout).await?;
            Ok(Keystore::Keychain(store))
        }
        KeystoreChoice::File => Ok(Keystore::File(FileStore::open(file_dir).await?)),
        KeystoreChoice::Auto => match KeychainStore::open(namespace, probe_timeout).await {
            Ok(store) => {
                tracing::info!(service = %namespace, "secrets are stored in the OS keychain");
                Ok(Keystore::Keychain(store))
            }
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    dir = %file_dir.display(),
                    "OS keychain unavailable; falling back to plain files for secrets"
                );
                Ok(Keystore::File(FileStore::open(file_dir).await?))
            }
        },
    }
}

pub(crate) async fn blocking<T, F>(f: F) -> Result<T, KeystoreError>
where
    F: FnOnce() -> Result<T, KeystoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KeystoreError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::from("hunter2-very-secret");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert_eq!(s.expose(), b"hunter2-very-secret");
        assert_eq!(s.expose_str().ok(), Some("hunter2-very-secret"));
    }

    #[test]
    fn namespaces_differ_per_home_and_are_stable() {
        let a = Namespace::for_home(Path::new("/tmp/home-a"));
        let b = Namespace::for_home(Path::new("/tmp/home-b"));
        assert_ne!(a, b);
        assert_eq!(a, Namespace::for_home(Path::new("/tmp/home-a")));
        assert!(a.service().starts_with("airlock:"));
        assert_eq!(a.service().len(), "airlock:".len() + 16);
        let expected = hex::encode(Sha256::digest(b"/tmp/home-a"));
        assert_eq!(a.service(), format!("airlock:{}", &expected[..16]));
    }

    #[test]
    fn name_validation() {
        for ok in ["ca-key", "tunnel.token", "A_b-9"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(129);
        for bad in ["", ".hidden", "a/b", "../x", "a b", "é", long.as_str()] {
            assert!(
                matches!(validate_name(bad), Err(KeystoreError::InvalidName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn choice_parses() {
        assert_eq!(
            "AUTO".parse::<KeystoreChoice>().ok(),
            Some(KeystoreChoice::Auto)
        );
        assert_eq!(
            "file".parse::<KeystoreChoice>().ok(),
            Some(KeystoreChoice::File)
        );
        assert_eq!(
            "keychain".parse::<KeystoreChoice>().ok(),
            Some(KeystoreChoice::Keychain)
        );
        assert!("vault".parse::<KeystoreChoice>().is_err());
    }
}
