//! OS keychain backend (crate `keyring` v3). On Linux this is the Secret Service over D-Bus
//! (pure-Rust zbus client); keyring's API is synchronous, so every call runs on tokio's
//! blocking pool under a time bound.

use std::time::Duration;

use keyring::Entry;

use crate::{DEFAULT_OP_TIMEOUT, KeystoreError, Namespace, Secret, blocking, validate_name};

/// Fails if `keyring` was built without a real backend for this platform. keyring v3 then
/// silently falls back to an in-memory mock store that forgets everything, which must never
/// be mistaken for a keychain.
pub fn ensure_real_keychain_backend() -> Result<(), KeystoreError> {
    use keyring::credential::CredentialPersistence;
    match keyring::default::default_credential_builder().persistence() {
        CredentialPersistence::UntilDelete => Ok(()),
        _ => Err(KeystoreError::NoKeychainBackend),
    }
}

/// Secrets in the OS keychain, all under one service name (the [`Namespace`]); the secret's
/// name is the keyring "user" (`username` attribute in the Secret Service).
#[derive(Debug, Clone)]
pub struct KeychainStore {
    service: String,
    op_timeout: Duration,
}

impl KeychainStore {
    /// Check the backend is real, then probe the keychain (set + get + delete of a
    /// throw-away entry) within `probe_timeout`.
    pub async fn open(
        namespace: &Namespace,
        probe_timeout: Duration,
    ) -> Result<Self, KeystoreError> {
        ensure_real_keychain_backend()?;
        let store = Self {
            service: namespace.service().to_string(),
            op_timeout: DEFAULT_OP_TIMEOUT,
        };
        store.probe(probe_timeout).await?;
        Ok(store)
    }

    /// The keychain service name all entries are stored under.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Write, read back and delete a random probe entry.
    pub async fn probe(&self, timeout: Duration) -> Result<(), KeystoreError> {
        let name = format!("airlock-probe-{:016x}", rand::random::<u64>());
        let value: [u8; 32] = rand::random();
        self.with_entry(&name, timeout, move |entry| {
            entry.set_secret(&value).map_err(map_keyring_error)?;
            let read = entry.get_secret();
            let deleted = entry.delete_credential();
            let read = read.map_err(map_keyring_error)?;
            deleted.map_err(map_keyring_error)?;
            if read.as_slice() == value.as_slice() {
                Ok(())
            } else {
                Err(KeystoreError::ProbeMismatch)
            }
        })
        .await
    }

    pub async fn get(&self, name: &str) -> Result<Option<Secret>, KeystoreError> {
        self.with_entry(name, self.op_timeout, |entry| match entry.get_secret() {
            Ok(bytes) => Ok(Some(Secret::new(bytes))),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(map_keyring_error(e)),
        })
        .await
    }

    pub async fn set(&self, name: &str, secret: &Secret) -> Result<(), KeystoreError> {
        let secret = secret.clone();
        self.with_entry(name, self.op_timeout, move |entry| {
            entry.set_secret(secret.expose()).map_err(map_keyring_error)
        })
        .await
    }

    pub async fn delete(&self, name: &str) -> Result<bool, KeystoreError> {
        self.with_entry(name, self.op_timeout, |entry| {
            match entry.delete_credential() {
                Ok(()) => Ok(true),
                Err(keyring::Error::NoEntry) => Ok(false),
                Err(e) => Err(map_keyring_error(e)),
            }
        })
        .await
    }

    async fn with_entry<T, F>(
        &self,
        name: &str,
        timeout: Duration,
        f: F,
    ) -> Result<T, KeystoreError>
    where
        T: Send + 'static,
        F: FnOnce(Entry) -> Result<T, KeystoreError> + Send + 'static,
    {
        validate_name(name)?;
        let service = self.service.clone();
        let name = name.to_string();
        let task = blocking(move || {
            let entry = Entry::new(&service, &name).map_err(map_keyring_error)?;
            f(entry)
        });
        // On timeout the blocking call keeps its pool thread until D-Bus answers; we stop waiting.
        tokio::time::timeout(timeout, task)
            .await
            .map_err(|_| KeystoreError::Timeout(timeout))?
    }
}

fn session_bus_configured() -> bool {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|v| !v.is_empty()) {
        return true;
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(|d| std::path::Path::new(&d).join("bus").exists())
        .unwrap_or(false)
}

/// Turn keyring's errors into messages that say what is wrong and how to fix it.
pub(crate) fn map_keyring_error(err: keyring::Error) -> KeystoreError {
    match err {
        keyring::Error::NoStorageAccess(e) => KeystoreError::Locked {
            detail: e.to_string(),
        },
        keyring::Error::PlatformFailure(e) => {
            let detail = e.to_string();
            let unavailable = detail.contains("no secret service provider or dbus session found");
            let autolaunch = detail.contains("autolaunch");
            // A locked collection surfaces as a D-Bus error, not as NoStorageAccess.
            let locked = detail.contains("org.freedesktop.Secret.Error.IsLocked")
                || detail.contains("locked collection");
            if locked {
                KeystoreError::Locked { detail }
            } else if (unavailable || autolaunch) && !session_bus_configured() {
                KeystoreError::NoSessionBus { detail }
            } else if unavailable {
                KeystoreError::NoSecretService { detail }
            } else {
                KeystoreError::Keychain { detail }
            }
        }
        keyring::Error::NoEntry => KeystoreError::Keychain {
            detail: "no such entry".to_string(),
        },
        keyring::Error::BadEncoding(_) => KeystoreError::Keychain {
            detail: "stored value has an unexpected encoding".to_string(),
        },
        keyring::Error::TooLong(attr, limit) => KeystoreError::Keychain {
            detail: format!("{attr} is longer than the platform limit of {limit}"),
        },
        keyring::Error::Invalid(attr, reason) => KeystoreError::Keychain {
            detail: format!("invalid {attr}: {reason}"),
        },
        keyring::Error::Ambiguous(items) => KeystoreError::Keychain {
            detail: format!(
                "{} keychain items match this entry; remove the duplicates (Linux: \
                 `secret-tool search --all service <service>` then `secret-tool clear ...`)",
                items.len()
            ),
        },
        other => KeystoreError::Keychain {
            detail: other.to_string(),
        },
    }
}
