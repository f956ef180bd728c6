//! File backend: 0600 files in a 0700 directory, round trip, overwrite, delete, name checks.

use std::path::Path;

use airlock_keystore::{
    Backend, FileStore, KeystoreChoice, KeystoreError, Namespace, Secret, open,
};

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| match e {
            Ok(e) => e.file_name().to_string_lossy().into_owned(),
            Err(e) => panic!("dir entry: {e}"),
        })
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn round_trip_overwrite_delete_with_strict_permissions() -> Result<(), KeystoreError> {
    let tmp = tempfile::tempdir().map_err(|e| KeystoreError::io(Path::new("tmp"), e))?;
    let dir = tmp.path().join("nested").join("secrets");
    let store = open(KeystoreChoice::File, &Namespace::for_home(tmp.path()), &dir).await?;
    assert_eq!(store.backend(), Backend::File);

    assert!(store.get("ca-key").await?.is_none());

    store.set("ca-key", &Secret::from("first value")).await?;
    let got = store.get("ca-key").await?;
    assert_eq!(got.as_ref().map(Secret::expose), Some(&b"first value"[..]));

    // Exactly one file, named after the secret, holding exactly the bytes; no temp files left.
    assert_eq!(entries(&dir), vec!["ca-key".to_string()]);
    assert_eq!(
        std::fs::read(dir.join("ca-key")).map_err(|e| KeystoreError::io(&dir, e))?,
        b"first value"
    );
    #[cfg(unix)]
    {
        assert_eq!(mode(&dir), 0o700, "secrets dir must be 0700");
        assert_eq!(mode(&dir.join("ca-key")), 0o600, "secret file must be 0600");
    }

    // Overwrite replaces atomically and keeps 0600.
    let binary: Vec<u8> = (0u8..=255).collect();
    store.set("ca-key", &Secret::new(binary.clone())).await?;
    let got = store.get("ca-key").await?;
    assert_eq!(got.as_ref().map(Secret::expose), Some(binary.as_slice()));
    assert_eq!(entries(&dir), vec!["ca-key".to_string()]);
    #[cfg(unix)]
    assert_eq!(mode(&dir.join("ca-key")), 0o600);

    // A second secret is independent.
    store.set("tunnel.token", &Secret::from("tok")).await?;
    assert_eq!(
        entries(&dir),
        vec!["ca-key".to_string(), "tunnel.token".to_string()]
    );

    assert!(
        store.delete("ca-key").await?,
        "delete of an existing secret"
    );
    assert!(store.get("ca-key").await?.is_none());
    assert!(
        !store.delete("ca-key").await?,
        "second delete finds nothing"
    );
    assert_eq!(entries(&dir), vec!["tunnel.token".to_string()]);
    let tok = store.get("tunnel.token").await?;
    assert_eq!(tok.as_ref().map(Secret::expose), Some(&b"tok"[..]));
    Ok(())
}

#[cfg(unix)]
#[tokio::test]
async fn existing_loose_directory_is_tightened_to_0700() -> Result<(), KeystoreError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().map_err(|e| KeystoreError::io(Path::new("tmp"), e))?;
    let dir = tmp.path().join("secrets");
    std::fs::create_dir(&dir).map_err(|e| KeystoreError::io(&dir, e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| KeystoreError::io(&dir, e))?;
    let store = FileStore::open(&dir).await?;
    assert_eq!(mode(store.dir()), 0o700);
    Ok(())
}

#[tokio::test]
async fn path_like_names_are_rejected_and_nothing_is_written() -> Result<(), KeystoreError> {
    let tmp = tempfile::tempdir().map_err(|e| KeystoreError::io(Path::new("tmp"), e))?;
    let dir = tmp.path().join("secrets");
    let store = FileStore::open(&dir).await?;
    for bad in ["../escape", "a/b", ".hidden", ""] {
        let err = store.set(bad, &Secret::from("x")).await;
        assert!(
            matches!(err, Err(KeystoreError::InvalidName(_))),
            "{bad:?}: {err:?}"
        );
        assert!(matches!(
            store.get(bad).await,
            Err(KeystoreError::InvalidName(_))
        ));
        assert!(matches!(
            store.delete(bad).await,
            Err(KeystoreError::InvalidName(_))
        ));
    }
    assert!(entries(&dir).is_empty());
    assert_eq!(entries(tmp.path()), vec!["secrets".to_string()]);
    Ok(())
}

#[tokio::test]
async fn a_file_where_the_directory_should_be_is_a_clear_error() -> Result<(), KeystoreError> {
    let tmp = tempfile::tempdir().map_err(|e| KeystoreError::io(Path::new("tmp"), e))?;
    let path = tmp.path().join("secrets");
    std::fs::write(&path, b"not a dir").map_err(|e| KeystoreError::io(&path, e))?;
    let err = FileStore::open(&path).await;
    assert!(err.is_err(), "{err:?}");
    Ok(())
}

/// Captures formatted log lines for the current thread.
#[derive(Clone, Default)]
struct LogBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn file_backend_warns_loudly() -> Result<(), KeystoreError> {
    let logs = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let tmp = tempfile::tempdir().map_err(|e| KeystoreError::io(Path::new("tmp"), e))?;
    let dir = tmp.path().join("secrets");
    let _store = open(KeystoreChoice::File, &Namespace::for_home(tmp.path()), &dir).await?;
    let text =
        String::from_utf8_lossy(&logs.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    assert!(
        text.contains("WARN")
            && text.contains("PLAIN FILES")
            && text.contains(&*dir.to_string_lossy()),
        "no loud warning in logs:\n{text}"
    );
    Ok(())
}
