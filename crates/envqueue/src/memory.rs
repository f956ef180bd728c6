//! Memory stores: named collections of path-addressed UTF-8 documents, attached to sessions as
//! `memory_store` resources and synced by workers through the memory API (beta
//! `agent-memory-2026-07-22`).
//!
//! Rules served here, as the API documents them: a path starts with `/`, is at most 1024 bytes
//! and has no empty, `.` or `..` segments and no control characters; content is at most
//! 102 400 bytes; a store holds at most 2000 memories; a path may not equal, contain or lie
//! under another memory's path (`memory_path_conflict_error`, 409); updates and deletes may carry
//! a `content_sha256` precondition (`memory_precondition_failed_error`, 409, unless the memory
//! already is what the update asks for). Every change mints a new `memory_version_id`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rusqlite::{Connection, OptionalExtension as _, params};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::store::{Caller, Error, Store, new_id, now_rfc3339};

/// Largest content of one memory, in bytes of UTF-8.
pub const MAX_CONTENT_BYTES: usize = 102_400;
/// Longest memory path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Memories one store holds at most.
pub const MAX_MEMORIES_PER_STORE: i64 = 2000;
/// Memory stores one session may attach.
pub const MAX_SESSION_STORES: usize = 8;
/// Page size caps of the memories list.
pub const MAX_PAGE_BASIC: usize = 100;
pub const MAX_PAGE_FULL: usize = 20;

/// How a caller may use a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    ReadWrite,
    ReadOnly,
}

/// The documented reason a worker's environment key is refused here.
pub(crate) const ENV_KEY_REFUSED: &str = "the memory endpoints reject the environment key: use the sessions token of a work item \
     whose session has this memory store attached (or the API key, x-api-key)";

pub(crate) fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Unicode format characters that would make two paths look alike (bidi controls, zero widths).
fn is_format_char(ch: char) -> bool {
    matches!(ch,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Checks a memory path; `field` names it in the message.
pub(crate) fn validate_memory_path(field: &str, p: &str) -> Result<(), Error> {
    let bad = |m: String| Err(Error::Invalid(format!("{field}: {m}")));
    if !p.starts_with('/') {
        return bad(format!(
            "must start with '/' (for example /notes/todo.md), got {p:?}"
        ));
    }
    if p.len() > MAX_PATH_BYTES {
        return bad(format!(
            "at most {MAX_PATH_BYTES} bytes, got {} bytes",
            p.len()
        ));
    }
    if p.contains('\0') {
        return bad("must not contain NUL characters".into());
    }
    if p.chars().any(|c| c.is_control() || is_format_char(c)) {
        return bad("must not contain control or format characters".into());
    }
    if p == "/" {
        return bad("must name a memory below the store root, not `/` itself".into());
    }
    for seg in p[1..].split('/') {
        match seg {
            "" => {
                return bad(format!(
                    "must not contain empty segments (`//` or a trailing `/`), got {p:?}"
                ));
            }
            "." | ".." => {
                return bad(format!("must not contain `.` or `..` segments, got {p:?}"));
            }
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn validate_content(field: &str, c: &str) -> Result<(), Error> {
    if c.len() > MAX_CONTENT_BYTES {
        return Err(Error::Invalid(format!(
            "{field}: at most {MAX_CONTENT_BYTES} bytes of UTF-8, got {} bytes",
            c.len()
        )));
    }
    Ok(())
}

pub(crate) fn validate_sha256(field: &str, s: &str) -> Result<(), Error> {
    if s.len() != 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Error::Invalid(format!(
            "{field}: 64 lowercase hexadecimal characters (the SHA-256 of the UTF-8 content) are required"
        )));
    }
    Ok(())
}

/// `mount_path` of a session resource: a clean absolute path.
pub(crate) fn validate_mount_path(field: &str, p: &str) -> Result<(), Error> {
    let bad = || {
        Err(Error::Invalid(format!(
            "{field}: must be a clean absolute path such as /mnt/memory/notes (no empty, `.` or `..` segments, no trailing `/`), got {p:?}"
        )))
    };
    if !p.starts_with('/') || p == "/" || p.len() > MAX_PATH_BYTES {
        return bad();
    }
    if p.chars().any(|c| c.is_control() || is_format_char(c)) {
        return bad();
    }
    if p[1..]
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad();
    }
    Ok(())
}

/// The directory name derived from a store name: lowercased, every run of characters other than
/// ASCII letters and digits made one hyphen (leading and trailing hyphens dropped).
pub(crate) fn name_slug(name: &str) -> String {
    let mut out = String::new();
    let mut hyphen = false;
    for ch in name.chars() {
        if ch.is_ascii_alphanumeric() {
            if hyphen && !out.is_empty() {
                out.push('-');
            }
            hyphen = false;
            out.push(ch.to_ascii_lowercase());
        } else {
            hyphen = true;
        }
    }
    out
}

fn page_cursor(key: &str) -> String {
    format!("page_{}", URL_SAFE_NO_PAD.encode(key.as_bytes()))
}

pub(crate) fn parse_page_cursor(s: &str) -> Result<String, Error> {
    s.strip_prefix("page_")
        .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| Error::Invalid("page: not a cursor returned by this API".into()))
}

fn store_json(r: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
    let meta: String = r.get(3)?;
    Ok(json!({
        "type": "memory_store",
        "id": r.get::<_, String>(0)?,
        "name": r.get::<_, String>(1)?,
        "description": r.get::<_, String>(2)?,
        "metadata": serde_json::from_str::<Value>(&meta).unwrap_or_else(|_| json!({})),
        "created_at": r.get::<_, String>(4)?,
        "updated_at": r.get::<_, String>(5)?,
        "archived_at": null,
    }))
}

const STORE_COLS: &str = "id, name, description, metadata, created_at, updated_at";

/// One memory row without its content.
#[derive(Debug, Clone)]
struct MemRow {
    id: String,
    store_id: String,
    path: String,
    sha: String,
    size: i64,
    version: String,
    created_at: String,
    updated_at: String,
}

const MEM_COLS: &str =
    "id, store_id, path, content_sha256, content_size, version_id, created_at, updated_at";

fn mem_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MemRow> {
    Ok(MemRow {
        id: r.get(0)?,
        store_id: r.get(1)?,
        path: r.get(2)?,
        sha: r.get(3)?,
        size: r.get(4)?,
        version: r.get(5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

impl MemRow {
    fn to_json(&self, content: Option<String>) -> Value {
        json!({
            "type": "memory",
            "id": self.id,
            "memory_store_id": self.store_id,
            "memory_version_id": self.version,
            "path": self.path,
            "content": content,
            "content_sha256": self.sha,
            "content_size_bytes": self.size,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

fn get_mem(c: &Connection, store: &str, mem: &str) -> Result<(MemRow, String), Error> {
    c.query_row(
        &format!("SELECT {MEM_COLS}, content FROM memories WHERE id = ?1 AND store_id = ?2"),
        params![mem, store],
        |r| Ok((mem_from_row(r)?, r.get::<_, String>(8)?)),
    )
    .optional()?
    .ok_or_else(|| Error::NotFound(format!("memory {mem} not found in memory store {store}")))
}

/// What the caller may do with `store` (which must exist in the caller's environment).
pub(crate) fn store_access(c: &Connection, caller: &Caller, store: &str) -> Result<Access, Error> {
    let env: Option<String> = c
        .query_row(
            "SELECT environment_id FROM memory_stores WHERE id = ?1",
            params![store],
            |r| r.get(0),
        )
        .optional()?;
    if env.as_deref() != Some(caller.env()) {
        return Err(Error::NotFound(format!("memory store {store} not found")));
    }
    match caller {
        Caller::Api { .. } => Ok(Access::ReadWrite),
        Caller::Worker { .. } => Err(Error::Forbidden(ENV_KEY_REFUSED.into())),
        Caller::Item { session_id, .. } => {
            let access: Option<String> = c
                .query_row(
                    "SELECT access FROM session_resources WHERE session_id = ?1 AND memory_store_id = ?2",
                    params![session_id, store],
                    |r| r.get(0),
                )
                .optional()?;
            match access.as_deref() {
                Some("read_only") => Ok(Access::ReadOnly),
                Some(_) => Ok(Access::ReadWrite),
                None => Err(Error::Forbidden(format!(
                    "memory store {store} is not attached to session {session_id}, so this sessions token cannot use it"
                ))),
            }
        }
    }
}

fn writable(c: &Connection, caller: &Caller, store: &str) -> Result<(), Error> {
    match store_access(c, caller, store)? {
        Access::ReadWrite => Ok(()),
        Access::ReadOnly => {
            let sid = match caller {
                Caller::Item { session_id, .. } => session_id.as_str(),
                _ => "",
            };
            Err(Error::Forbidden(format!(
                "memory store {store} is attached read_only to session {sid}: its sessions token may read memories but not create, update or delete them"
            )))
        }
    }
}

/// The memory whose path blocks `path` (equal, an ancestor or a descendant), other than `except`.
fn path_conflict(
    c: &Connection,
    store: &str,
    path: &str,
    except: Option<&str>,
) -> Result<Option<(String, String)>, Error> {
    let except = except.unwrap_or("");
    let find =
        |sql: &str, args: &[&dyn rusqlite::ToSql]| -> Result<Option<(String, String)>, Error> {
            Ok(c.query_row(sql, args, |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?)
        };
    if let Some(hit) = find(
        "SELECT id, path FROM memories WHERE store_id = ?1 AND path = ?2 AND id != ?3",
        &[&store, &path, &except],
    )? {
        return Ok(Some(hit));
    }
    // Descendants: every path in [path + "/", path + "0"), '0' being the byte after '/'.
    let (lo, hi) = (format!("{path}/"), format!("{path}0"));
    if let Some(hit) = find(
        "SELECT id, path FROM memories WHERE store_id = ?1 AND path >= ?2 AND path < ?3 AND id != ?4 \
         ORDER BY path LIMIT 1",
        &[&store, &lo, &hi, &except],
    )? {
        return Ok(Some(hit));
    }
    for (i, _) in path.match_indices('/').skip(1) {
        let ancestor = &path[..i];
        if let Some(hit) = find(
            "SELECT id, path FROM memories WHERE store_id = ?1 AND path = ?2 AND id != ?3",
            &[&store, &ancestor, &except],
        )? {
            return Ok(Some(hit));
        }
    }
    Ok(None)
}

fn conflict_error(path: &str, hit: (String, String)) -> Error {
    let (id, other) = hit;
    let message = if other == path {
        format!("a memory already exists at {path} ({id}); update it, or delete or rename it first")
    } else if other.starts_with(&format!("{path}/")) {
        format!(
            "{path} would be a directory of memory {other} ({id}); a memory cannot have memories below it"
        )
    } else {
        format!("{path} lies under memory {other} ({id}); a memory cannot have memories below it")
    };
    Error::PathConflict {
        message,
        memory_id: id,
        path: other,
    }
}

/// Filters of `GET /v1/memory_stores/{store}/memories`.
#[derive(Debug, Clone)]
pub(crate) struct MemoryQuery {
    pub full: bool,
    pub limit: usize,
    pub after: Option<String>,
    pub prefix: String,
    pub depth: usize,
}

enum Item {
    Memory(MemRow),
    Prefix(String),
}

impl Item {
    fn key(&self) -> &str {
        match self {
            Item::Memory(m) => &m.path,
            Item::Prefix(p) => p,
        }
    }
}

/// `name`/`description`/`metadata` of a new store.
fn store_fields(body: &Value) -> Result<(String, String, Value), Error> {
    let Value::Object(m) = body else {
        return Err(Error::Invalid("body must be a JSON object".into()));
    };
    let name = match m.get("name") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => return Err(Error::Invalid("name: field required".into())),
        Some(_) => return Err(Error::Invalid("name: must be a string".into())),
    };
    let n = name.chars().count();
    if n == 0 || n > 255 {
        return Err(Error::Invalid(format!(
            "name: 1 to 255 characters are required, got {n}"
        )));
    }
    if name.chars().any(|c| c.is_control() || is_format_char(c)) {
        return Err(Error::Invalid(
            "name: must not contain control or format characters".into(),
        ));
    }
    let description = match m.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.chars().count() <= 1024 => s.clone(),
        Some(Value::String(_)) => {
            return Err(Error::Invalid(
                "description: at most 1024 characters".into(),
            ));
        }
        Some(_) => return Err(Error::Invalid("description: must be a string".into())),
    };
    let metadata = match m.get("metadata") {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(md)) => {
            if md.len() > 16 {
                return Err(Error::Invalid("metadata: at most 16 pairs".into()));
            }
            for (k, v) in md {
                let kl = k.chars().count();
                if kl == 0 || kl > 64 {
                    return Err(Error::Invalid(
                        "metadata: keys must be 1 to 64 characters".into(),
                    ));
                }
                match v {
                    Value::String(s) if s.chars().count() <= 512 => {}
                    _ => {
                        return Err(Error::Invalid(format!(
                            "metadata.{k}: values must be strings of at most 512 characters"
                        )));
                    }
                }
            }
            Value::Object(md.clone())
        }
        Some(_) => return Err(Error::Invalid("metadata: must be an object".into())),
    };
    Ok((name, description, metadata))
}

/// A `memory_store` resource of a session request, checked apart from the database.
#[derive(Debug, Clone)]
pub(crate) struct ResourceReq {
    pub store_id: String,
    pub access: &'static str,
    pub mount_path: Option<String>,
    pub instructions: Option<String>,
}

/// Parses `resources` of `POST /v1/sessions`: memory stores only, at most eight, no duplicates.
pub(crate) fn parse_resources(env: &str, res: Option<&Value>) -> Result<Vec<ResourceReq>, Error> {
    let list = match res {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(Error::Invalid("resources: must be an array".into())),
    };
    let mut out: Vec<ResourceReq> = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let Value::Object(m) = r else {
            return Err(Error::Invalid(format!("resources[{i}]: must be an object")));
        };
        let t = m.get("type").and_then(Value::as_str).unwrap_or("");
        if t != "memory_store" {
            return Err(Error::Invalid(format!(
                "Environment {env} is a self-hosted environment. `resources` are not supported with self-hosted environments. \
                 (resources[{i}] has type {t:?}; only `memory_store` resources are served by this queue)"
            )));
        }
        let store_id = m
            .get("memory_store_id")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "resources[{i}].memory_store_id: a string is required"
                ))
            })?
            .to_string();
        let access = match m.get("access") {
            None | Some(Value::Null) => "read_write",
            Some(Value::String(s)) if s == "read_write" => "read_write",
            Some(Value::String(s)) if s == "read_only" => "read_only",
            Some(_) => {
                return Err(Error::Invalid(format!(
                    "resources[{i}].access: read_write or read_only"
                )));
            }
        };
        let mount_path = match m.get("mount_path") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => {
                validate_mount_path(&format!("resources[{i}].mount_path"), p)?;
                Some(p.clone())
            }
            Some(_) => {
                return Err(Error::Invalid(format!(
                    "resources[{i}].mount_path: must be a string"
                )));
            }
        };
        let instructions = match m.get("instructions") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.chars().count() <= 4096 => Some(s.clone()),
            Some(_) => {
                return Err(Error::Invalid(format!(
                    "resources[{i}].instructions: a string of at most 4096 characters"
                )));
            }
        };
        match m.get("name") {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => {
                return Err(Error::Invalid(format!(
                    "resources[{i}].name: must be a string"
                )));
            }
        }
        if out.iter().any(|o| o.store_id == store_id) {
            return Err(Error::Invalid(format!(
                "resources[{i}].memory_store_id: memory store {store_id} is attached twice"
            )));
        }
        out.push(ResourceReq {
            store_id,
            access,
            mount_path,
            instructions,
        });
    }
    if out.len() > MAX_SESSION_STORES {
        return Err(Error::Invalid(format!(
            "resources: at most {MAX_SESSION_STORES} memory stores per session, got {}",
            out.len()
        )));
    }
    Ok(out)
}

fn overlaps(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/"))
}

/// Resolves and stores the resources of a new session (inside its transaction).
pub(crate) fn attach_resources(
    c: &Connection,
    env: &str,
    sid: &str,
    reqs: &[ResourceReq],
) -> Result<(), Error> {
    let mut mounts: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let store: Option<(String, String, String)> = c
            .query_row(
                "SELECT environment_id, name, description FROM memory_stores WHERE id = ?1",
                params![r.store_id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        let Some((store_env, name, description)) = store.filter(|s| s.0 == env) else {
            return Err(Error::Invalid(format!(
                "resources[{i}].memory_store_id: memory store {} not found (create it with POST /v1/memory_stores)",
                r.store_id
            )));
        };
        let _ = store_env;
        let mount = match &r.mount_path {
            Some(p) => {
                if let Some(o) = mounts.iter().find(|o| overlaps(o, p)) {
                    return Err(Error::Invalid(format!(
                        "resources[{i}].mount_path: {p} overlaps the mount path {o} of another memory store"
                    )));
                }
                p.clone()
            }
            None => {
                let slug = name_slug(&name);
                let base = if slug.is_empty() {
                    format!("/mnt/memory/{}", r.store_id)
                } else {
                    format!("/mnt/memory/{slug}")
                };
                if mounts.iter().any(|o| overlaps(o, &base)) {
                    format!("/mnt/memory/{slug}-{}", r.store_id)
                } else {
                    base
                }
            }
        };
        mounts.push(mount.clone());
        rows.push((i, r, mount, name, description));
    }
    for (i, r, mount, name, description) in rows {
        c.execute(
            "INSERT INTO session_resources (session_id, position, id, memory_store_id, access, mount_path, name, description, instructions) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![sid, i as i64, new_id("sesrsc"), r.store_id, r.access, mount, name, description, r.instructions],
        )?;
    }
    Ok(())
}

/// The `resources` array of a session.
pub(crate) fn session_resources(c: &Connection, sid: &str) -> Result<Vec<Value>, Error> {
    let mut stmt = c.prepare(
        "SELECT id, memory_store_id, access, mount_path, name, description, instructions \
         FROM session_resources WHERE session_id = ?1 ORDER BY position",
    )?;
    let rows = stmt
        .query_map(params![sid], |r| {
            Ok(json!({
                "type": "memory_store",
                "id": r.get::<_, String>(0)?,
                "memory_store_id": r.get::<_, String>(1)?,
                "access": r.get::<_, String>(2)?,
                "mount_path": r.get::<_, String>(3)?,
                "name": r.get::<_, String>(4)?,
                "description": r.get::<_, String>(5)?,
                "instructions": r.get::<_, Option<String>>(6)?,
            }))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Optional `precondition` of an update: the expected `content_sha256`.
fn precondition(body: &serde_json::Map<String, Value>) -> Result<Option<String>, Error> {
    match body.get("precondition") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(p)) => {
            if p.get("type").and_then(Value::as_str) != Some("content_sha256") {
                return Err(Error::Invalid(
                    "precondition.type: must be \"content_sha256\"".into(),
                ));
            }
            match p.get("content_sha256") {
                Some(Value::String(s)) => {
                    validate_sha256("precondition.content_sha256", s)?;
                    Ok(Some(s.clone()))
                }
                _ => Err(Error::Invalid(
                    "precondition.content_sha256: a string is required".into(),
                )),
            }
        }
        Some(_) => Err(Error::Invalid("precondition: must be an object".into())),
    }
}

fn opt_string(body: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, Error> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::Invalid(format!("{key}: must be a string"))),
    }
}

impl Store {
    pub(crate) async fn create_memory_store(&self, env: &str, body: Value) -> Result<Value, Error> {
        let (name, description, metadata) = store_fields(&body)?;
        let env = env.to_string();
        self.db(move |c| {
            let id = new_id("memstore");
            let now = now_rfc3339();
            c.execute(
                "INSERT INTO memory_stores (id, environment_id, name, description, metadata, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                params![id, env, name, description, metadata.to_string(), now],
            )?;
            Ok(c.query_row(
                &format!("SELECT {STORE_COLS} FROM memory_stores WHERE id = ?1"),
                params![id],
                store_json,
            )?)
        })
        .await
    }

    pub(crate) async fn get_memory_store(
        &self,
        caller: &Caller,
        store: &str,
    ) -> Result<Value, Error> {
        let (caller, store) = (caller.clone(), store.to_string());
        self.db(move |c| {
            store_access(c, &caller, &store)?;
            Ok(c.query_row(
                &format!("SELECT {STORE_COLS} FROM memory_stores WHERE id = ?1"),
                params![store],
                store_json,
            )?)
        })
        .await
    }

    /// Stores of `env`, newest first; `page` is the offset cursor of a previous answer.
    pub(crate) async fn list_memory_stores(
        &self,
        env: &str,
        limit: usize,
        offset: i64,
    ) -> Result<Value, Error> {
        let env = env.to_string();
        self.db(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {STORE_COLS} FROM memory_stores WHERE environment_id = ?1 ORDER BY seq DESC LIMIT ?2 OFFSET ?3"
            ))?;
            let rows: Vec<Value> = stmt
                .query_map(params![env, limit as i64 + 1, offset], store_json)?
                .collect::<Result<_, _>>()?;
            let more = rows.len() > limit;
            let data: Vec<Value> = rows.into_iter().take(limit).collect();
            let next = more.then(|| format!("page_{}", offset + limit as i64));
            Ok(json!({"data": data, "next_page": next}))
        })
        .await
    }

    pub(crate) async fn list_memories(
        &self,
        caller: &Caller,
        store: &str,
        q: MemoryQuery,
    ) -> Result<Value, Error> {
        let (caller, store) = (caller.clone(), store.to_string());
        self.db(move |c| {
            store_access(c, &caller, &store)?;
            // Paths only (a store holds at most 2000), then content for the page alone.
            let hi = format!("{}0", &q.prefix[..q.prefix.len() - 1]);
            let mut stmt = c.prepare(&format!(
                "SELECT {MEM_COLS} FROM memories WHERE store_id = ?1 AND path >= ?2 AND path < ?3 ORDER BY path"
            ))?;
            let rows: Vec<MemRow> = stmt
                .query_map(params![store, q.prefix, hi], mem_from_row)?
                .collect::<Result<_, _>>()?;
            let mut items: Vec<Item> = Vec::new();
            for m in rows {
                if q.depth > 0 {
                    let rel = &m.path[q.prefix.len()..];
                    let segs: Vec<&str> = rel.split('/').collect();
                    if segs.len() > q.depth {
                        let p = format!("{}{}/", q.prefix, segs[..q.depth].join("/"));
                        if !matches!(items.last(), Some(Item::Prefix(last)) if *last == p) {
                            items.push(Item::Prefix(p));
                        }
                        continue;
                    }
                }
                items.push(Item::Memory(m));
            }
            let start = match &q.after {
                Some(after) => items.partition_point(|it| it.key() <= after.as_str()),
                None => 0,
            };
            let rest = &items[start..];
            let page = &rest[..rest.len().min(q.limit)];
            let next = (rest.len() > q.limit)
                .then(|| page.last().map(|it| page_cursor(it.key())))
                .flatten();
            let mut data = Vec::with_capacity(page.len());
            for it in page {
                match it {
                    Item::Prefix(p) => data.push(json!({"type": "memory_prefix", "path": p})),
                    Item::Memory(m) => {
                        let content = if q.full {
                            Some(c.query_row(
                                "SELECT content FROM memories WHERE id = ?1",
                                params![m.id],
                                |r| r.get::<_, String>(0),
                            )?)
                        } else {
                            None
                        };
                        data.push(m.to_json(content));
                    }
                }
            }
            Ok(json!({"data": data, "next_page": next}))
        })
        .await
    }

    pub(crate) async fn create_memory(
        &self,
        caller: &Caller,
        store: &str,
        body: Value,
    ) -> Result<Value, Error> {
        let Value::Object(body) = body else {
            return Err(Error::Invalid("body must be a JSON object".into()));
        };
        let path = opt_string(&body, "path")?
            .ok_or_else(|| Error::Invalid("path: field required".into()))?;
        let content = opt_string(&body, "content")?
            .ok_or_else(|| Error::Invalid("content: field required (may be empty)".into()))?;
        validate_memory_path("path", &path)?;
        validate_content("content", &content)?;
        let (caller, store) = (caller.clone(), store.to_string());
        self.db(move |c| {
            let tx = c.transaction()?;
            writable(&tx, &caller, &store)?;
            if let Some(hit) = path_conflict(&tx, &store, &path, None)? {
                return Err(conflict_error(&path, hit));
            }
            let n: i64 = tx.query_row(
                "SELECT COUNT(*) FROM memories WHERE store_id = ?1",
                params![store],
                |r| r.get(0),
            )?;
            if n >= MAX_MEMORIES_PER_STORE {
                return Err(Error::Invalid(format!(
                    "memory store {store} is full: it holds {n} memories, the most a store may hold is \
                     {MAX_MEMORIES_PER_STORE}; delete some before creating more"
                )));
            }
            let id = new_id("mem");
            let now = now_rfc3339();
            tx.execute(
                "INSERT INTO memories (id, store_id, path, content, content_sha256, content_size, version_id, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                params![id, store, path, content, sha256_hex(&content), content.len() as i64, new_id("memver"), now],
            )?;
            let (m, content) = get_mem(&tx, &store, &id)?;
            tx.commit()?;
            Ok(m.to_json(Some(content)))
        })
        .await
    }

    pub(crate) async fn get_memory(
        &self,
        caller: &Caller,
        store: &str,
        mem: &str,
        full: bool,
    ) -> Result<Value, Error> {
        let (caller, store, mem) = (caller.clone(), store.to_string(), mem.to_string());
        self.db(move |c| {
            store_access(c, &caller, &store)?;
            let (m, content) = get_mem(c, &store, &mem)?;
            Ok(m.to_json(full.then_some(content)))
        })
        .await
    }

    pub(crate) async fn update_memory(
        &self,
        caller: &Caller,
        store: &str,
        mem: &str,
        body: Value,
    ) -> Result<Value, Error> {
        let Value::Object(body) = body else {
            return Err(Error::Invalid("body must be a JSON object".into()));
        };
        let new_path = opt_string(&body, "path")?;
        let new_content = opt_string(&body, "content")?;
        if new_path.is_none() && new_content.is_none() {
            return Err(Error::Invalid(
                "at least one of content or path is required".into(),
            ));
        }
        if let Some(p) = &new_path {
            validate_memory_path("path", p)?;
        }
        if let Some(ct) = &new_content {
            validate_content("content", ct)?;
        }
        let expected = precondition(&body)?;
        let (caller, store, mem) = (caller.clone(), store.to_string(), mem.to_string());
        self.db(move |c| {
            let tx = c.transaction()?;
            writable(&tx, &caller, &store)?;
            let (m, content) = get_mem(&tx, &store, &mem)?;
            let same_path = new_path.as_ref().is_none_or(|p| *p == m.path);
            let same_content = new_content.as_ref().is_none_or(|ct| *ct == content);
            if same_path && same_content {
                // Already what was asked for (whatever the precondition says): no new version.
                return Ok(m.to_json(Some(content)));
            }
            if let Some(exp) = &expected
                && *exp != m.sha
            {
                return Err(Error::PreconditionFailed(format!(
                    "memory {mem} changed: its content_sha256 is {}, not the expected {exp}; read it again and retry against the fresh state",
                    m.sha
                )));
            }
            let path = new_path.unwrap_or_else(|| m.path.clone());
            if !same_path
                && let Some(hit) = path_conflict(&tx, &store, &path, Some(&mem))?
            {
                return Err(conflict_error(&path, hit));
            }
            let content = new_content.unwrap_or(content);
            tx.execute(
                "UPDATE memories SET path = ?1, content = ?2, content_sha256 = ?3, content_size = ?4, \
                 version_id = ?5, updated_at = ?6 WHERE id = ?7",
                params![path, content, sha256_hex(&content), content.len() as i64, new_id("memver"), now_rfc3339(), mem],
            )?;
            let (m, content) = get_mem(&tx, &store, &mem)?;
            tx.commit()?;
            Ok(m.to_json(Some(content)))
        })
        .await
    }

    pub(crate) async fn delete_memory(
        &self,
        caller: &Caller,
        store: &str,
        mem: &str,
        expected: Option<String>,
    ) -> Result<Value, Error> {
        if let Some(e) = &expected {
            validate_sha256("expected_content_sha256", e)?;
        }
        let (caller, store, mem) = (caller.clone(), store.to_string(), mem.to_string());
        self.db(move |c| {
            let tx = c.transaction()?;
            writable(&tx, &caller, &store)?;
            let (m, _) = get_mem(&tx, &store, &mem)?;
            if let Some(exp) = &expected
                && *exp != m.sha
            {
                return Err(Error::PreconditionFailed(format!(
                    "memory {mem} changed: its content_sha256 is {}, not the expected {exp}; nothing was deleted",
                    m.sha
                )));
            }
            tx.execute("DELETE FROM memories WHERE id = ?1", params![mem])?;
            tx.commit()?;
            Ok(json!({"type": "memory_deleted", "id": mem}))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_as_documented() {
        for ok in ["/a", "/notes/todo.md", "/a b/ü.txt", "/.hidden", "/a/...x"] {
            assert!(validate_memory_path("path", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "/",
            "/a/",
            "//a",
            "/a//b",
            "/./a",
            "/a/..",
            "/a/./b",
            "/a\0b",
            "/a\nb",
            "/a\u{200B}b",
        ] {
            assert!(validate_memory_path("path", bad).is_err(), "{bad:?}");
        }
        let long = format!("/{}", "x".repeat(MAX_PATH_BYTES));
        assert!(validate_memory_path("path", &long).is_err());
        assert!(validate_memory_path("path", &long[..MAX_PATH_BYTES]).is_ok());
    }

    #[test]
    fn slugs_follow_the_documented_rule() {
        assert_eq!(name_slug("User Preferences"), "user-preferences");
        assert_eq!(name_slug("  Déjà vu!! 2 "), "d-j-vu-2");
        assert_eq!(name_slug("***"), "");
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let c = page_cursor("/notes/ä b.md");
        assert_eq!(parse_page_cursor(&c).unwrap(), "/notes/ä b.md");
        assert!(parse_page_cursor("off_3").is_err());
        assert!(parse_page_cursor("page_%%").is_err());
    }
}
