//! SQLite-backed state of the queue: environments, work items, sessions and their events.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, Semaphore, broadcast};

/// The literal a worker sends as `expected_last_heartbeat` to claim a lease that has no heartbeat yet.
pub const NO_HEARTBEAT: &str = "NO_HEARTBEAT";
/// Default `reclaim_older_than_ms` of a poll.
pub const DEFAULT_RECLAIM_MS: u64 = 5000;

/// Tunables of the queue.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Lease TTL granted by a heartbeat without `desired_ttl_seconds` (and after an ack).
    pub lease_ttl_seconds: u64,
    /// Upper bound of `desired_ttl_seconds`.
    pub max_ttl_seconds: u64,
    /// Long polls held open at once; more polls answer `null` at once.
    pub max_poll_waiters: usize,
    /// Concurrent SSE subscribers per server.
    pub max_stream_subscribers: usize,
    /// Interval of `event: ping` keep-alives on the event stream.
    pub stream_keepalive: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            lease_ttl_seconds: 90,
            max_ttl_seconds: 600,
            max_poll_waiters: 256,
            max_stream_subscribers: 256,
            stream_keepalive: Duration::from_secs(15),
        }
    }
}

/// Errors of the store; the API maps them to Anthropic-style error bodies.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    /// The heartbeat's `expected_last_heartbeat` did not match; carries the server's view.
    #[error(
        "expected_last_heartbeat does not match the stored heartbeat; another worker may hold the lease"
    )]
    LeaseMismatch(Value),
    /// A memory update or delete whose `content_sha256` precondition did not hold.
    #[error("{0}")]
    PreconditionFailed(String),
    /// A memory create or rename onto a path another memory uses (or overlaps).
    #[error("{message}")]
    PathConflict {
        message: String,
        /// The memory in the way.
        memory_id: String,
        /// Its path.
        path: String,
    },
    #[error("internal: {0}")]
    Internal(String),
    #[error("cannot create the state directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What `create_environment` hands out: keys are shown once, only their hashes are stored.
#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentCredentials {
    pub environment_id: String,
    /// Workers' credential (`Authorization: Bearer`).
    pub environment_key: String,
    /// The orchestrating side's credential (`x-api-key`).
    pub api_key: String,
}

/// Who is calling, as resolved from the request's credential.
#[derive(Debug, Clone)]
pub enum Caller {
    /// `x-api-key` of an environment: the orchestrating side.
    Api { env: String },
    /// `Authorization: Bearer <environment key>`: a worker.
    Worker { env: String },
    /// `Authorization: Bearer <sessions token>` from one poll delivery of one work item.
    Item {
        env: String,
        work_id: String,
        session_id: String,
    },
}

impl Caller {
    pub fn env(&self) -> &str {
        match self {
            Caller::Api { env } | Caller::Worker { env } | Caller::Item { env, .. } => env,
        }
    }
}

/// The queue and sessions store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    db: Mutex<Connection>,
    pub(crate) opts: StoreOptions,
    notifiers: Mutex<HashMap<String, Arc<Notify>>>,
    streams: Mutex<HashMap<String, broadcast::Sender<Arc<Value>>>>,
    pub(crate) poll_waiters: Arc<Semaphore>,
    pub(crate) stream_permits: Arc<Semaphore>,
    workers_seen: Mutex<HashMap<(String, String), Instant>>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS environments (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    api_key_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL,
    status TEXT NOT NULL,
    agent TEXT NOT NULL,
    metadata TEXT NOT NULL,
    title TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    archived_at TEXT
);
CREATE TABLE IF NOT EXISTS work (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    environment_id TEXT NOT NULL,
    data_type TEXT NOT NULL,
    data_id TEXT NOT NULL,
    state TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    polled_ms INTEGER,
    polled_by TEXT,
    acknowledged_at TEXT,
    started_at TEXT,
    latest_heartbeat_at TEXT,
    lease_expires_ms INTEGER,
    ttl_seconds INTEGER NOT NULL,
    stop_requested_at TEXT,
    stopped_at TEXT
);
CREATE INDEX IF NOT EXISTS work_env_state ON work(environment_id, state);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    work_id TEXT NOT NULL,
    environment_id TEXT NOT NULL,
    session_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    session_id TEXT NOT NULL,
    type TEXT NOT NULL,
    ref_id TEXT,
    body TEXT NOT NULL,
    processed_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_session ON events(session_id, seq);
CREATE INDEX IF NOT EXISTS events_ref ON events(session_id, type, ref_id);
CREATE TABLE IF NOT EXISTS memory_stores (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    environment_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS memories (
    id TEXT PRIMARY KEY,
    store_id TEXT NOT NULL,
    path TEXT NOT NULL,
    content TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    content_size INTEGER NOT NULL,
    version_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (store_id, path)
);
CREATE TABLE IF NOT EXISTS session_resources (
    session_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    id TEXT NOT NULL,
    memory_store_id TEXT NOT NULL,
    access TEXT NOT NULL,
    mount_path TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    instructions TEXT,
    PRIMARY KEY (session_id, position)
);
CREATE INDEX IF NOT EXISTS session_resources_store ON session_resources(session_id, memory_store_id);
"#;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// RFC 3339 with microseconds, UTC.
pub(crate) fn rfc3339_us(us: i64) -> String {
    let nanos = i128::from(us) * 1000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => {
            let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
            format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
                t.hour(),
                t.minute(),
                t.second(),
                t.microsecond()
            )
        }
        Err(_) => "1970-01-01T00:00:00.000000Z".to_string(),
    }
}

pub(crate) fn now_rfc3339() -> String {
    rfc3339_us(now_us())
}

fn random_token(prefix: &str, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(&buf))
}

/// IDs in the style of the API (`env_…`, `work_…`, `sesn_…`, `sevt_…`): prefix + 24 base62 chars.
pub(crate) fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut buf = [0u8; 24];
    rand::rng().fill_bytes(&mut buf);
    let s: String = buf
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("{prefix}_{s}")
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn parse_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

/// A row of `work` as the API shows it.
struct WorkRow {
    id: String,
    environment_id: String,
    data_type: String,
    data_id: String,
    state: String,
    metadata: String,
    created_at: String,
    polled_ms: Option<i64>,
    acknowledged_at: Option<String>,
    started_at: Option<String>,
    latest_heartbeat_at: Option<String>,
    ttl_seconds: i64,
    stop_requested_at: Option<String>,
    stopped_at: Option<String>,
}

const WORK_COLS: &str = "id, environment_id, data_type, data_id, state, metadata, created_at, polled_ms, \
     acknowledged_at, started_at, latest_heartbeat_at, ttl_seconds, stop_requested_at, stopped_at";

fn work_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WorkRow> {
    Ok(WorkRow {
        id: r.get(0)?,
        environment_id: r.get(1)?,
        data_type: r.get(2)?,
        data_id: r.get(3)?,
        state: r.get(4)?,
        metadata: r.get(5)?,
        created_at: r.get(6)?,
        polled_ms: r.get(7)?,
        acknowledged_at: r.get(8)?,
        started_at: r.get(9)?,
        latest_heartbeat_at: r.get(10)?,
        ttl_seconds: r.get(11)?,
        stop_requested_at: r.get(12)?,
        stopped_at: r.get(13)?,
    })
}

impl WorkRow {
    fn to_json(&self, secret: Option<&str>) -> Value {
        json!({
            "type": "work",
            "id": self.id,
            "environment_id": self.environment_id,
            "data": {"type": self.data_type, "id": self.data_id},
            "state": self.state,
            "metadata": parse_json(&self.metadata),
            "secret": secret,
            "created_at": self.created_at,
            "acknowledged_at": self.acknowledged_at,
            "started_at": self.started_at,
            "latest_heartbeat_at": self.latest_heartbeat_at,
            "stop_requested_at": self.stop_requested_at,
            "stopped_at": self.stopped_at,
        })
    }
}

fn get_work(conn: &Connection, env: &str, work_id: &str) -> Result<WorkRow, Error> {
    conn.query_row(
        &format!("SELECT {WORK_COLS} FROM work WHERE id = ?1 AND environment_id = ?2"),
        params![work_id, env],
        work_from_row,
    )
    .optional()?
    .ok_or_else(|| {
        Error::NotFound(format!(
            "work item {work_id} not found in environment {env}"
        ))
    })
}

/// Puts acked items whose lease lapsed back in the queue. Returns whether any moved.
fn expire_leases(conn: &Connection, env: &str, now: i64) -> Result<bool, Error> {
    let n = conn.execute(
        "UPDATE work SET state = 'queued', polled_ms = NULL, polled_by = NULL, acknowledged_at = NULL, \
         started_at = NULL, latest_heartbeat_at = NULL, lease_expires_ms = NULL \
         WHERE environment_id = ?1 AND state IN ('starting', 'active') AND lease_expires_ms IS NOT NULL \
         AND lease_expires_ms < ?2",
        params![env, now],
    )?;
    Ok(n > 0)
}

fn lease_state(w: &WorkRow, extended: bool) -> Value {
    json!({
        "last_heartbeat": w.latest_heartbeat_at,
        "lease_extended": extended,
        "state": w.state,
        "ttl_seconds": w.ttl_seconds,
    })
}

/// Types the orchestrating side may post (the extension) and that the worker may post.
const API_EVENT_TYPES: &[&str] = &[
    "agent.tool_use",
    "agent.custom_tool_use",
    "agent.message",
    "agent.thinking",
    "agent.tool_result",
    "session.status_idle",
    "session.status_running",
    "session.status_rescheduled",
    "session.status_terminated",
    "session.error",
    "user.message",
    "user.interrupt",
    "user.tool_confirmation",
    "user.custom_tool_result",
];
const WORKER_EVENT_TYPES: &[&str] = &["user.tool_result", "user.custom_tool_result"];
/// Events that need a worker: posting one to a session without a live work item queues one.
const WAKING_EVENT_TYPES: &[&str] = &[
    "agent.tool_use",
    "agent.custom_tool_use",
    "user.message",
    "user.tool_confirmation",
];

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store, Error> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        Self::with_connection(conn, opts)
    }

    /// A store in memory (tests, throwaway servers).
    pub fn in_memory(opts: StoreOptions) -> Result<Store, Error> {
        Self::with_connection(Connection::open_in_memory()?, opts)
    }

    fn with_connection(conn: Connection, opts: StoreOptions) -> Result<Store, Error> {
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            inner: Arc::new(Inner {
                db: Mutex::new(conn),
                poll_waiters: Arc::new(Semaphore::new(opts.max_poll_waiters)),
                stream_permits: Arc::new(Semaphore::new(opts.max_stream_subscribers)),
                opts,
                notifiers: Mutex::new(HashMap::new()),
                streams: Mutex::new(HashMap::new()),
                workers_seen: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn options(&self) -> &StoreOptions {
        &self.inner.opts
    }

    /// Runs `f` on the connection on a blocking thread.
    pub(crate) async fn db<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner
                .db
                .lock()
                .map_err(|_| Error::Internal("database lock poisoned".into()))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| Error::Internal(format!("database task failed: {e}")))?
    }

    pub(crate) fn notifier(&self, env: &str) -> Arc<Notify> {
        let mut map = match self.inner.notifiers.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry(env.to_string())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    fn wake_pollers(&self, env: &str) {
        self.notifier(env).notify_waiters();
    }

    pub(crate) fn subscribe(&self, session_id: &str) -> broadcast::Receiver<Arc<Value>> {
        let mut map = match self.inner.streams.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.retain(|_, tx| tx.receiver_count() > 0);
        map.entry(session_id.to_string())
            .or_insert_with(|| broadcast::channel(1024).0)
            .subscribe()
    }

    fn publish(&self, session_id: &str, events: &[Value]) {
        let map = match self.inner.streams.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(tx) = map.get(session_id) {
            for ev in events {
                let _ = tx.send(Arc::new(ev.clone()));
            }
        }
    }

    /// Creates an environment and mints its keys.
    pub async fn create_environment(&self, name: &str) -> Result<EnvironmentCredentials, Error> {
        let creds = EnvironmentCredentials {
            environment_id: new_id("env"),
            environment_key: random_token("alk_env_", 32),
            api_key: random_token("alk_api_", 32),
        };
        let (id, kh, ah, name) = (
            creds.environment_id.clone(),
            hash(&creds.environment_key),
            hash(&creds.api_key),
            name.to_string(),
        );
        self.db(move |c| {
            c.execute(
                "INSERT INTO environments (id, name, key_hash, api_key_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, name, kh, ah, now_rfc3339()],
            )?;
            Ok(())
        })
        .await?;
        Ok(creds)
    }

    /// Resolves `x-api-key` / a bearer token to a caller.
    pub(crate) async fn authenticate(
        &self,
        api_key: Option<String>,
        bearer: Option<String>,
    ) -> Result<Option<Caller>, Error> {
        self.db(move |c| {
            if let Some(k) = api_key {
                let env: Option<String> = c
                    .query_row(
                        "SELECT id FROM environments WHERE api_key_hash = ?1",
                        params![hash(&k)],
                        |r| r.get(0),
                    )
                    .optional()?;
                return Ok(env.map(|env| Caller::Api { env }));
            }
            let Some(tok) = bearer else { return Ok(None) };
            let h = hash(&tok);
            let env: Option<String> = c
                .query_row(
                    "SELECT id FROM environments WHERE key_hash = ?1",
                    params![h],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(env) = env {
                return Ok(Some(Caller::Worker { env }));
            }
            let item = c
                .query_row(
                    "SELECT environment_id, work_id, session_id FROM tokens WHERE hash = ?1",
                    params![h],
                    |r| {
                        Ok(Caller::Item {
                            env: r.get(0)?,
                            work_id: r.get(1)?,
                            session_id: r.get(2)?,
                        })
                    },
                )
                .optional()?;
            Ok(item)
        })
        .await
    }

    /// Claims one pollable item: queued and never polled, or polled longer than `reclaim_ms` ago.
    /// Returns the work JSON with a fresh `secret`.
    pub(crate) async fn try_claim(
        &self,
        env: &str,
        reclaim_ms: u64,
        worker_id: Option<String>,
    ) -> Result<Option<Value>, Error> {
        if let Some(w) = &worker_id {
            let mut seen = match self.inner.workers_seen.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            seen.insert((env.to_string(), w.clone()), Instant::now());
        }
        let env = env.to_string();
        let (found, requeued) = self
            .db(move |c| {
                let now = now_ms();
                let requeued = expire_leases(c, &env, now)?;
                let tx = c.transaction()?;
                let row = tx
                    .query_row(
                        &format!(
                            "SELECT {WORK_COLS} FROM work WHERE environment_id = ?1 AND state = 'queued' \
                             AND (polled_ms IS NULL OR polled_ms <= ?2) ORDER BY seq LIMIT 1"
                        ),
                        params![env, now - reclaim_ms as i64],
                        work_from_row,
                    )
                    .optional()?;
                let Some(mut row) = row else {
                    return Ok((None, requeued));
                };
                tx.execute(
                    "UPDATE work SET polled_ms = ?1, polled_by = ?2 WHERE id = ?3",
                    params![now, worker_id, row.id],
                )?;
                row.polled_ms = Some(now);
                let token = random_token("alk_sess_", 32);
                tx.execute(
                    "INSERT INTO tokens (hash, work_id, environment_id, session_id) VALUES (?1, ?2, ?3, ?4)",
                    params![hash(&token), row.id, env, row.data_id],
                )?;
                tx.commit()?;
                let secret = URL_SAFE_NO_PAD.encode(json!({ "sessions_token": token }).to_string());
                Ok((Some(row.to_json(Some(&secret))), requeued))
            })
            .await?;
        let _ = requeued;
        Ok(found)
    }

    pub(crate) async fn ack(&self, caller: &Caller, work_id: &str) -> Result<Value, Error> {
        let (env, work_id) = (caller.env().to_string(), work_id.to_string());
        self.db(move |c| {
            let now = now_ms();
            expire_leases(c, &env, now)?;
            let w = get_work(c, &env, &work_id)?;
            if w.state != "queued" {
                return Err(Error::Conflict(format!(
                    "work item {work_id} is {}; only a queued item can be acknowledged",
                    w.state
                )));
            }
            if w.polled_ms.is_none() {
                return Err(Error::Conflict(format!(
                    "work item {work_id} has not been delivered by a poll"
                )));
            }
            c.execute(
                "UPDATE work SET state = 'starting', acknowledged_at = ?1, lease_expires_ms = ?2 WHERE id = ?3",
                params![now_rfc3339(), now + w.ttl_seconds * 1000, work_id],
            )?;
            Ok(get_work(c, &env, &work_id)?.to_json(None))
        })
        .await
    }

    pub(crate) async fn heartbeat(
        &self,
        caller: &Caller,
        work_id: &str,
        expected: Option<String>,
        desired_ttl: Option<u64>,
    ) -> Result<Value, Error> {
        let (env, work_id) = (caller.env().to_string(), work_id.to_string());
        let opts = self.inner.opts.clone();
        let (resp, requeued) = self
            .db(move |c| {
                let now = now_ms();
                let requeued = expire_leases(c, &env, now)?;
                let w = get_work(c, &env, &work_id)?;
                if w.state == "stopping" || w.state == "stopped" {
                    // The server does not compare the precondition once a stop was requested.
                    return Ok((
                        json!({
                            "type": "work_heartbeat",
                            "last_heartbeat": w.latest_heartbeat_at.clone().unwrap_or_default(),
                            "lease_extended": false,
                            "state": w.state,
                            "ttl_seconds": w.ttl_seconds,
                        }),
                        requeued,
                    ));
                }
                let current = w
                    .latest_heartbeat_at
                    .clone()
                    .unwrap_or_else(|| NO_HEARTBEAT.to_string());
                let expected = expected.unwrap_or_else(|| current.clone());
                if expected != current || w.state == "queued" {
                    return Err(Error::LeaseMismatch(lease_state(&w, false)));
                }
                let ttl = desired_ttl
                    .unwrap_or(opts.lease_ttl_seconds)
                    .clamp(1, opts.max_ttl_seconds) as i64;
                // Strictly newer than the previous value, so a stale echo never matches again.
                let mut us = now_us();
                if let Some(prev) = &w.latest_heartbeat_at
                    && rfc3339_us(us) <= *prev
                {
                    us = prev_us(prev).map(|p| p + 1).unwrap_or(us);
                }
                let beat = rfc3339_us(us);
                let started = if w.state == "starting" {
                    Some(beat.clone())
                } else {
                    w.started_at.clone()
                };
                c.execute(
                    "UPDATE work SET state = 'active', latest_heartbeat_at = ?1, lease_expires_ms = ?2, \
                     ttl_seconds = ?3, started_at = ?4 WHERE id = ?5",
                    params![beat, now + ttl * 1000, ttl, started, work_id],
                )?;
                Ok((
                    json!({
                        "type": "work_heartbeat",
                        "last_heartbeat": beat,
                        "lease_extended": true,
                        "state": "active",
                        "ttl_seconds": ttl,
                    }),
                    requeued,
                ))
            })
            .await?;
        if requeued {
            self.wake_pollers(caller.env());
        }
        Ok(resp)
    }

    pub(crate) async fn stop(
        &self,
        caller: &Caller,
        work_id: &str,
        force: bool,
    ) -> Result<Value, Error> {
        let (env, work_id) = (caller.env().to_string(), work_id.to_string());
        self.db(move |c| {
            let w = get_work(c, &env, &work_id)?;
            let now = now_rfc3339();
            match (w.state.as_str(), force) {
                ("stopped", _) => {
                    return Err(Error::Conflict(format!("work item {work_id} is already stopped")));
                }
                ("queued", _) | (_, true) => {
                    c.execute(
                        "UPDATE work SET state = 'stopped', stopped_at = ?1, \
                         stop_requested_at = COALESCE(stop_requested_at, ?1), lease_expires_ms = NULL WHERE id = ?2",
                        params![now, work_id],
                    )?;
                }
                ("stopping", false) => {}
                _ => {
                    c.execute(
                        "UPDATE work SET state = 'stopping', stop_requested_at = ?1 WHERE id = ?2",
                        params![now, work_id],
                    )?;
                }
            }
            Ok(get_work(c, &env, &work_id)?.to_json(None))
        })
        .await
    }

    pub(crate) async fn retrieve_work(&self, env: &str, work_id: &str) -> Result<Value, Error> {
        let (env, work_id) = (env.to_string(), work_id.to_string());
        self.db(move |c| Ok(get_work(c, &env, &work_id)?.to_json(None)))
            .await
    }

    pub(crate) async fn update_work_metadata(
        &self,
        env: &str,
        work_id: &str,
        patch: serde_json::Map<String, Value>,
    ) -> Result<Value, Error> {
        let (env, work_id) = (env.to_string(), work_id.to_string());
        self.db(move |c| {
            let w = get_work(c, &env, &work_id)?;
            let mut meta = match parse_json(&w.metadata) {
                Value::Object(m) => m,
                _ => serde_json::Map::new(),
            };
            for (k, v) in patch {
                match v {
                    Value::Null => {
                        meta.remove(&k);
                    }
                    Value::String(s) => {
                        meta.insert(k, Value::String(s));
                    }
                    _ => {
                        return Err(Error::Invalid(format!(
                            "metadata.{k}: values must be strings (or null to delete)"
                        )));
                    }
                }
            }
            c.execute(
                "UPDATE work SET metadata = ?1 WHERE id = ?2",
                params![Value::Object(meta).to_string(), work_id],
            )?;
            Ok(get_work(c, &env, &work_id)?.to_json(None))
        })
        .await
    }

    pub(crate) async fn list_work(
        &self,
        env: &str,
        limit: usize,
        page: Option<i64>,
    ) -> Result<Value, Error> {
        let env = env.to_string();
        self.db(move |c| {
            let offset = page.unwrap_or(0).max(0);
            let mut stmt = c.prepare(&format!(
                "SELECT {WORK_COLS} FROM work WHERE environment_id = ?1 ORDER BY seq DESC LIMIT ?2 OFFSET ?3"
            ))?;
            let rows: Vec<WorkRow> = stmt
                .query_map(params![env, limit as i64 + 1, offset], work_from_row)?
                .collect::<Result<_, _>>()?;
            let more = rows.len() > limit;
            let data: Vec<Value> = rows.iter().take(limit).map(|w| w.to_json(None)).collect();
            let next = more.then(|| format!("off_{}", offset + limit as i64));
            Ok(json!({"data": data, "next_page": next}))
        })
        .await
    }

    pub(crate) async fn stats(&self, env: &str) -> Result<Value, Error> {
        let polling = {
            let mut seen = match self.inner.workers_seen.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            seen.retain(|_, t| t.elapsed() < Duration::from_secs(30));
            seen.keys().filter(|(e, _)| e == env).count()
        };
        let env = env.to_string();
        self.db(move |c| {
            let now = now_ms();
            expire_leases(c, &env, now)?;
            let cutoff = now - DEFAULT_RECLAIM_MS as i64;
            let depth: i64 = c.query_row(
                "SELECT COUNT(*) FROM work WHERE environment_id = ?1 AND state = 'queued' \
                 AND (polled_ms IS NULL OR polled_ms <= ?2)",
                params![env, cutoff],
                |r| r.get(0),
            )?;
            let pending: i64 = c.query_row(
                "SELECT COUNT(*) FROM work WHERE environment_id = ?1 AND state = 'queued' AND polled_ms > ?2",
                params![env, cutoff],
                |r| r.get(0),
            )?;
            let oldest: Option<String> = c
                .query_row(
                    "SELECT created_at FROM work WHERE environment_id = ?1 AND state = 'queued' ORDER BY seq LIMIT 1",
                    params![env],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(json!({
                "type": "work_queue_stats",
                "depth": depth,
                "pending": pending,
                "oldest_queued_at": oldest,
                "workers_polling": polling,
            }))
        })
        .await
    }

    /// Creates a session (and queues its first work item).
    pub(crate) async fn create_session(&self, env: &str, body: Value) -> Result<Value, Error> {
        let Value::Object(body) = body else {
            return Err(Error::Invalid("body must be a JSON object".into()));
        };
        let env_in_body = body
            .get("environment_id")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Invalid("environment_id: field required".into()))?;
        if env_in_body != env {
            return Err(Error::NotFound(format!(
                "environment {env_in_body} not found"
            )));
        }
        let resources = crate::memory::parse_resources(env, body.get("resources"))?;
        let agent = agent_snapshot(body.get("agent"))?;
        let metadata = match body.get("metadata") {
            None | Some(Value::Null) => json!({}),
            Some(Value::Object(m)) if m.values().all(Value::is_string) => Value::Object(m.clone()),
            Some(_) => return Err(Error::Invalid("metadata: values must be strings".into())),
        };
        let title = body
            .get("title")
            .and_then(Value::as_str)
            .map(str::to_string);
        let id = new_id("sesn");
        let env = env.to_string();
        let sid = id.clone();
        let ttl = self.inner.opts.lease_ttl_seconds as i64;
        let session = self
            .db(move |c| {
                let now = now_rfc3339();
                let tx = c.transaction()?;
                tx.execute(
                    "INSERT INTO sessions (id, environment_id, status, agent, metadata, title, created_at, updated_at) \
                     VALUES (?1, ?2, 'idle', ?3, ?4, ?5, ?6, ?6)",
                    params![sid, env, agent.to_string(), metadata.to_string(), title, now],
                )?;
                crate::memory::attach_resources(&tx, &env, &sid, &resources)?;
                insert_work(&tx, &env, &sid, ttl)?;
                let s = session_json(&tx, &sid)?;
                tx.commit()?;
                Ok(s)
            })
            .await?;
        self.wake_pollers(&env_of(&session));
        Ok(session)
    }

    pub(crate) async fn get_session(
        &self,
        caller: &Caller,
        session_id: &str,
    ) -> Result<Value, Error> {
        let (caller, sid) = (caller.clone(), session_id.to_string());
        self.db(move |c| {
            check_session_access(c, &caller, &sid)?;
            session_json(c, &sid)
        })
        .await
    }

    pub(crate) async fn archive_session(
        &self,
        caller: &Caller,
        session_id: &str,
    ) -> Result<Value, Error> {
        let (caller, sid) = (caller.clone(), session_id.to_string());
        let (session, events) = self
            .db(move |c| {
                check_session_access(c, &caller, &sid)?;
                let now = now_rfc3339();
                let status: String =
                    c.query_row("SELECT status FROM sessions WHERE id = ?1", params![sid], |r| r.get(0))?;
                let mut events = Vec::new();
                c.execute(
                    "UPDATE sessions SET status = 'terminated', archived_at = COALESCE(archived_at, ?1), \
                     updated_at = ?1 WHERE id = ?2",
                    params![now, sid],
                )?;
                if status != "terminated" {
                    events.push(insert_event(c, &sid, json!({"type": "session.status_terminated"}))?);
                }
                Ok((session_json(c, &sid)?, events))
            })
            .await?;
        self.publish(session_id, &events);
        Ok(session)
    }

    /// Appends events sent by `caller`; returns the stored events.
    pub(crate) async fn send_events(
        &self,
        caller: &Caller,
        session_id: &str,
        events: Vec<Value>,
    ) -> Result<Vec<Value>, Error> {
        if events.is_empty() {
            return Err(Error::Invalid(
                "events: at least one event is required".into(),
            ));
        }
        let allowed: &[&str] = match caller {
            Caller::Api { .. } => API_EVENT_TYPES,
            _ => WORKER_EVENT_TYPES,
        };
        for (i, ev) in events.iter().enumerate() {
            let t = ev.get("type").and_then(Value::as_str).unwrap_or("");
            if !ev.is_object() || t.is_empty() {
                return Err(Error::Invalid(format!(
                    "events[{i}]: an object with a string `type` is required"
                )));
            }
            if !allowed.contains(&t) {
                return Err(Error::Invalid(format!(
                    "events[{i}].type: `{t}` cannot be sent with this credential (allowed: {})",
                    allowed.join(", ")
                )));
            }
        }
        let (caller2, sid) = (caller.clone(), session_id.to_string());
        let ttl = self.inner.opts.lease_ttl_seconds as i64;
        let (stored, wake_env) = self
            .db(move |c| {
                check_session_access(c, &caller2, &sid)?;
                let tx = c.transaction()?;
                let status: String = tx.query_row(
                    "SELECT status FROM sessions WHERE id = ?1",
                    params![sid],
                    |r| r.get(0),
                )?;
                if status == "terminated" {
                    return Err(Error::Invalid(format!(
                        "session {sid} is terminated and accepts no events"
                    )));
                }
                let mut stored = Vec::with_capacity(events.len());
                let mut new_status: Option<&str> = None;
                let mut wakes = false;
                for (i, ev) in events.into_iter().enumerate() {
                    let ev = validate_event(&tx, &sid, i, ev)?;
                    let t = ev
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    if WAKING_EVENT_TYPES.contains(&t.as_str()) {
                        wakes = true;
                    }
                    match t.as_str() {
                        "session.status_idle" => new_status = Some("idle"),
                        "session.status_terminated" => new_status = Some("terminated"),
                        "session.status_rescheduled" => new_status = Some("rescheduling"),
                        x if x.starts_with("agent.") || x == "session.status_running" => {
                            new_status = Some("running")
                        }
                        _ => {}
                    }
                    stored.push(insert_event(&tx, &sid, ev)?);
                }
                if let Some(s) = new_status {
                    tx.execute(
                        "UPDATE sessions SET status = ?1, updated_at = ?2 WHERE id = ?3",
                        params![s, now_rfc3339(), sid],
                    )?;
                }
                let mut wake_env = None;
                if wakes && matches!(caller2, Caller::Api { .. }) {
                    let live: i64 = tx.query_row(
                        "SELECT COUNT(*) FROM work WHERE data_id = ?1 AND state != 'stopped'",
                        params![sid],
                        |r| r.get(0),
                    )?;
                    if live == 0 {
                        insert_work(&tx, caller2.env(), &sid, ttl)?;
                        wake_env = Some(caller2.env().to_string());
                    }
                }
                tx.commit()?;
                Ok((stored, wake_env))
            })
            .await?;
        if let Some(env) = wake_env {
            self.wake_pollers(&env);
        }
        self.publish(session_id, &stored);
        Ok(stored)
    }

    pub(crate) async fn list_events(
        &self,
        caller: &Caller,
        session_id: &str,
        q: EventQuery,
    ) -> Result<Value, Error> {
        let (caller, sid) = (caller.clone(), session_id.to_string());
        self.db(move |c| {
            check_session_access(c, &caller, &sid)?;
            let desc = q.order_desc;
            let mut sql = String::from("SELECT seq, body FROM events WHERE session_id = ?1");
            let mut args: Vec<rusqlite::types::Value> = vec![sid.clone().into()];
            if let Some(after) = q.page {
                sql.push_str(if desc { " AND seq < ?" } else { " AND seq > ?" });
                args.push(after.into());
            }
            for (op, v) in &q.created {
                sql.push_str(&format!(" AND processed_at {op} ?"));
                args.push(v.clone().into());
            }
            if !q.types.is_empty() {
                let marks = vec!["?"; q.types.len()].join(", ");
                sql.push_str(&format!(" AND type IN ({marks})"));
                for t in &q.types {
                    args.push(t.clone().into());
                }
            }
            sql.push_str(if desc {
                " ORDER BY seq DESC"
            } else {
                " ORDER BY seq ASC"
            });
            sql.push_str(&format!(" LIMIT {}", q.limit + 1));
            let mut stmt = c.prepare(&sql)?;
            let rows: Vec<(i64, String)> = stmt
                .query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            let more = rows.len() > q.limit;
            let page: Vec<&(i64, String)> = rows.iter().take(q.limit).collect();
            let next = if more {
                page.last().map(|(seq, _)| format!("seq_{seq}"))
            } else {
                None
            };
            let data: Vec<Value> = page.iter().map(|(_, b)| parse_json(b)).collect();
            Ok(json!({"data": data, "next_page": next}))
        })
        .await
    }

    /// Checks access before a stream is opened.
    pub(crate) async fn check_session(
        &self,
        caller: &Caller,
        session_id: &str,
    ) -> Result<(), Error> {
        let (caller, sid) = (caller.clone(), session_id.to_string());
        self.db(move |c| check_session_access(c, &caller, &sid))
            .await
    }
}

fn prev_us(rfc: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(rfc, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

fn env_of(session: &Value) -> String {
    session
        .get("environment_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Filters of `GET /v1/sessions/{id}/events`.
#[derive(Debug, Default, Clone)]
pub(crate) struct EventQuery {
    pub limit: usize,
    pub order_desc: bool,
    pub page: Option<i64>,
    pub types: Vec<String>,
    pub created: Vec<(&'static str, String)>,
}

fn insert_work(c: &Connection, env: &str, session_id: &str, ttl: i64) -> Result<(), Error> {
    c.execute(
        "INSERT INTO work (id, environment_id, data_type, data_id, state, metadata, created_at, created_ms, ttl_seconds) \
         VALUES (?1, ?2, 'session', ?3, 'queued', '{}', ?4, ?5, ?6)",
        params![new_id("work"), env, session_id, now_rfc3339(), now_ms(), ttl],
    )?;
    Ok(())
}

fn check_session_access(c: &Connection, caller: &Caller, sid: &str) -> Result<(), Error> {
    let env: Option<String> = c
        .query_row(
            "SELECT environment_id FROM sessions WHERE id = ?1",
            params![sid],
            |r| r.get(0),
        )
        .optional()?;
    let Some(env) = env else {
        return Err(Error::NotFound(format!("session {sid} not found")));
    };
    if env != caller.env() {
        return Err(Error::NotFound(format!("session {sid} not found")));
    }
    if let Caller::Item { session_id, .. } = caller
        && session_id != sid
    {
        return Err(Error::Forbidden(format!(
            "this sessions token is scoped to another session, not {sid}"
        )));
    }
    Ok(())
}

fn session_json(c: &Connection, sid: &str) -> Result<Value, Error> {
    let resources = crate::memory::session_resources(c, sid)?;
    c.query_row(
        "SELECT id, environment_id, status, agent, metadata, title, created_at, updated_at, archived_at \
         FROM sessions WHERE id = ?1",
        params![sid],
        |r| {
            let agent: String = r.get(3)?;
            let meta: String = r.get(4)?;
            Ok(json!({
                "type": "session",
                "id": r.get::<_, String>(0)?,
                "environment_id": r.get::<_, String>(1)?,
                "status": r.get::<_, String>(2)?,
                "agent": parse_json(&agent),
                "metadata": parse_json(&meta),
                "title": r.get::<_, Option<String>>(5)?,
                "created_at": r.get::<_, String>(6)?,
                "updated_at": r.get::<_, String>(7)?,
                "archived_at": r.get::<_, Option<String>>(8)?,
                "budget": null,
                "deployment_id": null,
                "outcome_evaluations": [],
                "resources": resources,
                "stats": {"active_seconds": null, "duration_seconds": null},
                "usage": {},
                "vault_ids": [],
            }))
        },
    )
    .optional()?
    .ok_or_else(|| Error::NotFound(format!("session {sid} not found")))
}

/// The agent snapshot of a session: an agent id (string), `{id, version}` or a full definition.
fn agent_snapshot(agent: Option<&Value>) -> Result<Value, Error> {
    let mut snap = json!({
        "type": "agent",
        "id": "agent_local",
        "name": "agent_local",
        "version": 1,
        "description": null,
        "system": null,
        "model": {"id": "external"},
        "tools": [{"type": "agent_toolset_20260401"}],
        "skills": [],
        "mcp_servers": [],
        "multiagent": null,
        "execution_identity": null,
    });
    match agent {
        None => return Err(Error::Invalid("agent: field required".into())),
        Some(Value::String(id)) => {
            snap["id"] = json!(id);
            snap["name"] = json!(id);
        }
        Some(Value::Object(m)) => {
            let id = m
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Invalid("agent.id: field required".into()))?;
            snap["name"] = json!(id);
            if let Some(skills) = m.get("skills").and_then(Value::as_array)
                && !skills.is_empty()
            {
                return Err(Error::Invalid(
                    "agent.skills: skills are not served by this queue".into(),
                ));
            }
            if let Value::Object(s) = &mut snap {
                for (k, v) in m {
                    if k != "type" {
                        s.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        Some(_) => return Err(Error::Invalid("agent: a string id or an object".into())),
    }
    Ok(snap)
}

/// Checks one incoming event and fills in server fields. `i` is its index in the request.
fn validate_event(c: &Connection, sid: &str, i: usize, ev: Value) -> Result<Value, Error> {
    let Value::Object(mut m) = ev else {
        return Err(Error::Invalid(format!("events[{i}]: must be an object")));
    };
    let t = m
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let field = |m: &serde_json::Map<String, Value>, k: &str| -> Result<String, Error> {
        m.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Error::Invalid(format!("events[{i}].{k}: a string is required for {t}")))
    };
    match t.as_str() {
        "agent.tool_use" | "agent.custom_tool_use" => {
            field(&m, "name")?;
            match m.get("input") {
                Some(Value::Object(_)) => {}
                None => {
                    m.insert("input".into(), json!({}));
                }
                Some(_) => {
                    return Err(Error::Invalid(format!(
                        "events[{i}].input: must be an object"
                    )));
                }
            }
            if t == "agent.tool_use" {
                match m.get("evaluated_permission") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(p)) if ["allow", "ask", "deny"].contains(&p.as_str()) => {}
                    Some(_) => {
                        return Err(Error::Invalid(format!(
                            "events[{i}].evaluated_permission: one of allow, ask, deny"
                        )));
                    }
                }
            }
        }
        "user.tool_result" | "user.custom_tool_result" => {
            let (key, use_type) = if t == "user.tool_result" {
                ("tool_use_id", "agent.tool_use")
            } else {
                ("custom_tool_use_id", "agent.custom_tool_use")
            };
            let use_id = field(&m, key)?;
            let exists: Option<i64> = c
                .query_row(
                    "SELECT seq FROM events WHERE session_id = ?1 AND id = ?2 AND type = ?3",
                    params![sid, use_id, use_type],
                    |r| r.get(0),
                )
                .optional()?;
            if exists.is_none() {
                return Err(Error::Invalid(format!(
                    "events[{i}].{key}: no {use_type} event {use_id} in session {sid}"
                )));
            }
            let answered: Option<i64> = c
                .query_row(
                    "SELECT seq FROM events WHERE session_id = ?1 AND type = ?2 AND ref_id = ?3",
                    params![sid, t, use_id],
                    |r| r.get(0),
                )
                .optional()?;
            if answered.is_some() {
                return Err(Error::Invalid(format!(
                    "events[{i}].{key}: {use_id} already has a result"
                )));
            }
            match m.get("content") {
                None | Some(Value::Null) => {
                    m.insert("content".into(), json!([]));
                }
                Some(Value::Array(_)) => {}
                Some(_) => {
                    return Err(Error::Invalid(format!(
                        "events[{i}].content: must be an array"
                    )));
                }
            }
            match m.get("is_error") {
                None | Some(Value::Null) => {
                    m.insert("is_error".into(), json!(false));
                }
                Some(Value::Bool(_)) => {}
                Some(_) => {
                    return Err(Error::Invalid(format!(
                        "events[{i}].is_error: must be a boolean"
                    )));
                }
            }
        }
        "user.tool_confirmation" => {
            field(&m, "tool_use_id")?;
            let r = field(&m, "result")?;
            if r != "allow" && r != "deny" {
                return Err(Error::Invalid(format!("events[{i}].result: allow or deny")));
            }
        }
        "session.status_idle" if !m.get("stop_reason").is_some_and(Value::is_object) => {
            m.insert("stop_reason".into(), json!({"type": "end_turn"}));
        }
        _ => {}
    }
    Ok(Value::Object(m))
}

fn insert_event(c: &Connection, sid: &str, ev: Value) -> Result<Value, Error> {
    let Value::Object(mut m) = ev else {
        return Err(Error::Invalid("event must be an object".into()));
    };
    let id = new_id("sevt");
    let processed = now_rfc3339();
    m.insert("id".into(), json!(id));
    m.insert("processed_at".into(), json!(processed));
    let t = m
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ref_id = m
        .get("tool_use_id")
        .or_else(|| m.get("custom_tool_use_id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let body = Value::Object(m);
    c.execute(
        "INSERT INTO events (id, session_id, type, ref_id, body, processed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, sid, t, ref_id, body.to_string(), processed],
    )?;
    Ok(body)
}
