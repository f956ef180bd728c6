//! File backend: one `0600` file per secret inside a `0700` directory, written atomically
//! (temp file + fsync + rename + directory fsync).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{KeystoreError, Secret, blocking, validate_name};

/// Secrets as plain files. Only as safe as the account's file permissions: prefer the keychain.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// Create (if needed) `dir` with mode `0700` and use it. Always logs a warning: secrets
    /// stored this way are readable by anything running as this user.
    pub async fn open(dir: &Path) -> Result<Self, KeystoreError> {
        let dir = dir.to_path_buf();
        let d = dir.clone();
        blocking(move || prepare_dir(&d)).await?;
        tracing::warn!(
            dir = %dir.display(),
            "SECRETS ARE STORED IN PLAIN FILES (mode 0600) instead of the OS keychain; \
             anything running as this user can read them"
        );
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds secret `name` (the name is validated first).
    pub fn path_of(&self, name: &str) -> Result<PathBuf, KeystoreError> {
        validate_name(name)?;
        Ok(self.dir.join(name))
    }

    pub async fn get(&self, name: &str) -> Result<Option<Secret>, KeystoreError> {
        let path = self.path_of(name)?;
        blocking(move || match std::fs::read(&path) {
            Ok(bytes) => {
                warn_if_loose(&path);
                Ok(Some(Secret::new(bytes)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(KeystoreError::io(&path, e)),
        })
        .await
    }

    pub async fn set(&self, name: &str, secret: &Secret) -> Result<(), KeystoreError> {
        let path = self.path_of(name)?;
        let dir = self.dir.clone();
        let secret = secret.clone();
        let name = name.to_string();
        blocking(move || write_atomic(&dir, &name, &path, secret.expose())).await
    }

    pub async fn delete(&self, name: &str) -> Result<bool, KeystoreError> {
        let path = self.path_of(name)?;
        let dir = self.dir.clone();
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(KeystoreError::io(&path, e)),
        })
        .await
    }
}

fn prepare_dir(dir: &Path) -> Result<(), KeystoreError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| KeystoreError::io(dir, e))?;
    let meta = std::fs::metadata(dir).map_err(|e| KeystoreError::io(dir, e))?;
    if !meta.is_dir() {
        return Err(KeystoreError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode != 0o700 {
            tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), "tightening secrets directory to 0700");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| KeystoreError::io(dir, e))?;
        }
    }
    Ok(())
}

fn write_atomic(dir: &Path, name: &str, path: &Path, bytes: &[u8]) -> Result<(), KeystoreError> {
    let tmp = dir.join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(&tmp).map_err(|e| KeystoreError::io(&tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| KeystoreError::io(&tmp, e))?;
        file.sync_all().map_err(|e| KeystoreError::io(&tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| KeystoreError::io(path, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<(), KeystoreError> {
    #[cfg(unix)]
    {
        let d = std::fs::File::open(dir).map_err(|e| KeystoreError::io(dir, e))?;
        d.sync_all().map_err(|e| KeystoreError::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn warn_if_loose(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "secret file is readable by other users; fix with `chmod 600`"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}
