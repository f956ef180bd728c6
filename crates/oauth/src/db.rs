//! The SQLite database, owned by one thread; async callers send closures through a bounded channel.

use std::path::Path;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::types::Error;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Handle to the database thread (cheap to clone).
#[derive(Clone, Debug)]
pub(crate) struct Db {
    tx: mpsc::Sender<Job>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    redirect_uris TEXT NOT NULL,
    auth_method TEXT NOT NULL,
    secret_hash BLOB,
    application_type TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    server_id TEXT NOT NULL,
    resource TEXT NOT NULL,
    scopes TEXT NOT NULL,
    tools TEXT,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    revoked INTEGER,
    last_used INTEGER,
    label TEXT
);
CREATE INDEX IF NOT EXISTS grants_client ON grants(client_id);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    revoked INTEGER,
    rotated INTEGER,
    last_used INTEGER
);
CREATE INDEX IF NOT EXISTS tokens_grant ON tokens(grant_id);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    server_id TEXT,
    client_id TEXT,
    grant_id TEXT,
    token_id TEXT,
    method TEXT,
    tool TEXT,
    status INTEGER,
    bytes_in INTEGER,
    bytes_out INTEGER,
    duration_ms INTEGER,
    ingress TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts);
";

impl Db {
    /// Opens (creating) the database and starts its thread. Blocking: call from `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Db, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        #[cfg(unix)]
        {
            // Created 0600 from the start (SQLite gives its -wal/-shm files the database's mode).
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| Error::Io {
                    path: path.to_owned(),
                    source,
                })?;
        }
        let conn = Connection::open(path).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| Error::Io {
                    path: path.to_owned(),
                    source,
                },
            )?;
        }
        let init = |c: &Connection| -> rusqlite::Result<()> {
            c.busy_timeout(std::time::Duration::from_secs(5))?;
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "NORMAL")?;
            c.execute_batch(SCHEMA)
        };
        init(&conn).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::start(conn))
    }

    fn start(mut conn: Connection) -> Db {
        let (tx, mut rx) = mpsc::channel::<Job>(256);
        std::thread::Builder::new()
            .name("airlock-oauth-db".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut conn);
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("could not start the OAuth database thread: {e}"));
        Db { tx }
    }

    /// Runs `f` on the database thread.
    pub async fn call<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    {
        let (otx, orx) = oneshot::channel();
        self.tx
            .send(Box::new(move |c| {
                let _ = otx.send(f(c));
            }))
            .await
            .map_err(|_| Error::Closed)?;
        orx.await.map_err(|_| Error::Closed)?
    }
}
