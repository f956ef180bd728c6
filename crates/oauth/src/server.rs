//! [`AuthServer`]: state, approvals, grants, tokens, revocation, listing, audit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::audit::{self, AuditEntry, AuditKind, AuditQuery};
use crate::cimd::CimdFetcher;
use crate::clients::{self, ClientKind, ClientRecord};
use crate::db::Db;
use crate::limits::RateLimit;
use crate::tokens::{self, AccessEntry, AccessIndex, Hash};
use crate::types::*;

/// Everything [`AuthServer::open`] needs.
#[derive(Clone)]
pub struct Options {
    pub config: Config,
    pub resources: Arc<dyn ResourceResolver>,
    pub clock: Arc<dyn Clock>,
    pub cimd: CimdFetcher,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("config", &self.config)
            .finish()
    }
}

impl Options {
    /// The system clock and a CIMD fetcher using the system resolver and the Mozilla roots.
    pub fn new(config: Config, resources: Arc<dyn ResourceResolver>) -> Self {
        Self {
            config,
            resources,
            clock: Arc::new(SystemClock),
            cimd: CimdFetcher::system(),
        }
    }
}

/// The authorization server. Cheap to clone.
#[derive(Clone)]
pub struct AuthServer {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AuthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthServer")
            .field("live_access_tokens", &self.inner.index.len())
            .finish()
    }
}

pub(crate) enum AuditMsg {
    Entry(Box<AuditEntry>),
    Flush(oneshot::Sender<()>),
}

pub(crate) struct Inner {
    pub cfg: Config,
    pub resources: Arc<dyn ResourceResolver>,
    pub clock: Arc<dyn Clock>,
    pub cimd: CimdFetcher,
    pub db: Db,
    pub index: AccessIndex,
    pub state: Mutex<State>,
    pub events: broadcast::Sender<Event>,
    audit_tx: mpsc::Sender<AuditMsg>,
    pub audit_dropped: AtomicU64,
    pub token_limit: RateLimit,
    pub register_limit: RateLimit,
    pub approval_limit: RateLimit,
}

/// How a decided approval continues.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    Approved { code: String },
    Denied,
    Failed,
}

pub(crate) struct Pending {
    pub approval: Approval,
    pub state_param: Option<String>,
    pub code_challenge: String,
    pub issuer: String,
    /// Key of the status URL (random, 256 bits).
    pub ticket: String,
    /// CSRF token of the page (also in a SameSite=Strict cookie).
    pub csrf: String,
    pub outcome: Option<Outcome>,
    /// Remote approvals: the confirmation code the page shows (normalized, 8 symbols), required to approve.
    pub confirm: Option<String>,
    /// Wrong confirmation codes so far.
    pub wrong_codes: u32,
    /// Why it was denied, when not by the person (told to the client in `error_description`).
    pub denied_why: Option<&'static str>,
}

pub(crate) struct Code {
    pub grant_id: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub challenge: String,
    pub server_id: String,
    pub expires: Millis,
}

#[derive(Default)]
pub(crate) struct State {
    pub pending: HashMap<String, Pending>,
    pub codes: HashMap<Hash, Code>,
    /// Redeemed codes → (grant, expiry): a second redemption revokes the grant.
    pub used_codes: HashMap<Hash, (String, Millis)>,
    pub cimd_cache: HashMap<String, (ClientRecord, Millis)>,
}

const CIMD_CACHE_MAX: usize = 256;
/// Audit records waiting for the database at most (beyond: dropped and counted).
const AUDIT_QUEUE: usize = 8192;

/// A newly issued pair (plaintexts), for the token response.
pub(crate) struct Issued {
    pub access: String,
    pub refresh: Option<String>,
    pub expires_in: i64,
    pub scopes: Scopes,
}

/// What a token row + its grant say (for refresh and revocation).
struct TokenRow {
    token_id: String,
    kind: String,
    grant_id: String,
    expires: Millis,
    revoked: Option<Millis>,
    rotated: Option<Millis>,
    client_id: String,
    server_id: String,
    scopes: String,
    tools: Option<String>,
    grant_expires: Millis,
    grant_revoked: Option<Millis>,
}

/// Why a refresh failed (mapped to OAuth errors by the endpoint).
pub(crate) enum RefreshError {
    InvalidGrant(String),
    InvalidClient,
    Internal(Error),
}

impl AuthServer {
    /// Opens the database, loads live access tokens into memory and starts the background tasks (audit writer,
    /// expiry sweep). Must be called inside a tokio runtime.
    pub async fn open(opts: Options) -> Result<AuthServer, Error> {
        let path = opts.config.db_path.clone();
        let db = tokio::task::spawn_blocking(move || Db::open(&path))
            .await
            .map_err(|_| Error::Closed)??;
        let (events, _) = broadcast::channel(256);
        let (audit_tx, audit_rx) = mpsc::channel(AUDIT_QUEUE);
        let cfg = opts.config;
        let inner = Arc::new(Inner {
            token_limit: RateLimit::new(cfg.token_requests_per_minute),
            register_limit: RateLimit::new(cfg.registrations_per_minute),
            approval_limit: RateLimit::new(cfg.approvals_per_minute),
            cfg,
            resources: opts.resources,
            clock: opts.clock,
            cimd: opts.cimd,
            db: db.clone(),
            index: AccessIndex::default(),
            state: Mutex::default(),
            events,
            audit_tx,
            audit_dropped: AtomicU64::new(0),
        });
        let server = AuthServer { inner };
        server.load_index().await?;
        tokio::spawn(audit_writer(db, audit_rx));
        tokio::spawn(sweeper(Arc::downgrade(&server.inner)));
        Ok(server)
    }

    async fn load_index(&self) -> Result<(), Error> {
        let now = self.now();
        let rows = self
            .inner
            .db
            .call(move |c| {
                let mut stmt = c.prepare(
                    "SELECT t.id, t.hash, t.grant_id, g.client_id, COALESCE(cl.name, g.client_id), g.server_id,
                            g.scopes, g.tools, MIN(t.expires, g.expires), COALESCE(t.last_used, 0)
                     FROM tokens t JOIN grants g ON g.id = t.grant_id LEFT JOIN clients cl ON cl.client_id = g.client_id
                     WHERE t.kind = 'access' AND t.revoked IS NULL AND g.revoked IS NULL AND t.expires > ?1",
                )?;
                let rows = stmt.query_map([now], |r| {
                    let hash: Vec<u8> = r.get(1)?;
                    let scopes: String = r.get(6)?;
                    let tools: Option<String> = r.get(7)?;
                    Ok((
                        hash,
                        AccessEntry {
                            token_id: r.get(0)?,
                            grant_id: r.get(2)?,
                            client_id: r.get(3)?,
                            client_name: r.get(4)?,
                            server_id: r.get(5)?,
                            scopes: Scopes::parse_requested(Some(&scopes)),
                            tools: tools.and_then(|t| serde_json::from_str(&t).ok()),
                            expires_ms: r.get(8)?,
                            last_used_ms: AtomicI64::new(r.get(9)?),
                            flushed_ms: AtomicI64::new(r.get(9)?),
                        },
                    ))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        for (hash, entry) in rows {
            if let Ok(h) = <Hash>::try_from(hash.as_slice()) {
                self.inner.index.insert(h, entry);
            }
        }
        Ok(())
    }

    pub(crate) fn now(&self) -> Millis {
        self.inner.clock.now_ms()
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// What `bearer_token` allows on `server_id`. Sync and cheap: an in-memory lookup of the token's hash.
    pub fn verify(&self, server_id: &str, bearer_token: &str) -> Result<Access, Rejection> {
        self.inner.index.verify(server_id, bearer_token, self.now())
    }

    /// Queues one MCP call for the audit log. Never blocks; if the queue is full the entry is dropped and counted
    /// ([`AuthServer::audit_dropped`]).
    pub fn record_mcp_call(&self, call: McpCall) {
        self.audit(AuditEntry::from_call(self.now(), call));
    }

    /// Audit entries dropped because the queue was full.
    pub fn audit_dropped(&self) -> u64 {
        self.inner.audit_dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn audit(&self, e: AuditEntry) {
        if self
            .inner
            .audit_tx
            .try_send(AuditMsg::Entry(Box::new(e)))
            .is_err()
        {
            let n = self.inner.audit_dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                tracing::warn!(
                    dropped = n + 1,
                    "the audit log queue is full; records are being dropped"
                );
            }
        }
    }

    pub(crate) fn emit(&self, e: Event) {
        let _ = self.inner.events.send(e);
    }

    /// Approval and grant events (pending added/decided/expired, grant issued/revoked).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Audit entries, newest first.
    pub async fn audit_log(&self, q: AuditQuery) -> Result<Vec<AuditEntry>, Error> {
        let (tx, rx) = oneshot::channel();
        if self.inner.audit_tx.send(AuditMsg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.inner.db.call(move |c| audit::query(c, &q)).await
    }

    /// Pending approvals (undecided, unexpired), oldest first.
    pub fn approvals(&self) -> Vec<Approval> {
        let now = self.now();
        let st = self.state();
        let mut v: Vec<Approval> = st
            .pending
            .values()
            .filter(|p| p.outcome.is_none() && p.approval.expires_ms > now)
            .map(|p| p.approval.clone())
            .collect();
        v.sort_by_key(|a| a.created_ms);
        v
    }

    /// Decides a pending approval, once. Approving creates the grant and the authorization code the status page
    /// hands to the client. A remote approval (opened on a relay hostname) is approved only with the confirmation
    /// code its page shows ([`Decision::Approve`] `code`, compared in constant time); the
    /// [`MAX_WRONG_CODES`]th wrong code denies it. Denying needs no code.
    pub async fn decide(&self, id: &str, decision: Decision) -> Result<(), Error> {
        let now = self.now();
        let mut refused: Option<Error> = None;
        let (approval, code_info) = {
            let mut st = self.state();
            let p = st
                .pending
                .get_mut(id)
                .filter(|p| {
                    p.approval.state != "expired"
                        && (p.approval.expires_ms > now || p.outcome.is_some())
                })
                .ok_or_else(|| Error::UnknownApproval(id.to_owned()))?;
            if p.outcome.is_some() {
                return Err(Error::AlreadyDecided(id.to_owned()));
            }
            if let (Decision::Approve { code, .. }, Some(expected)) = (&decision, &p.confirm) {
                let Some(typed) = code.as_deref().filter(|c| !c.trim().is_empty()) else {
                    return Err(Error::CodeRequired(id.to_owned()));
                };
                if !tokens::ct_eq(
                    tokens::normalize_code(typed).as_bytes(),
                    expected.as_bytes(),
                ) {
                    p.wrong_codes += 1;
                    tracing::warn!(
                        approval = id,
                        attempts = p.wrong_codes,
                        "a wrong confirmation code was entered for a remote approval"
                    );
                    if p.wrong_codes < MAX_WRONG_CODES {
                        return Err(Error::WrongCode {
                            id: id.to_owned(),
                            left: MAX_WRONG_CODES - p.wrong_codes,
                        });
                    }
                    refused = Some(Error::TooManyWrongCodes(id.to_owned()));
                }
            }
            match &decision {
                Decision::Approve { .. } if refused.is_some() => {
                    p.outcome = Some(Outcome::Denied);
                    p.approval.state = "denied".into();
                    p.denied_why = Some("denied after too many wrong confirmation codes");
                    (p.approval.clone(), None)
                }
                Decision::Deny => {
                    p.outcome = Some(Outcome::Denied);
                    p.approval.state = "denied".into();
                    (p.approval.clone(), None)
                }
                Decision::Approve { tools, .. } => {
                    let tools = tools.clone().map(clean_tools).or(p.approval.tools.clone());
                    p.approval.tools = tools.clone();
                    let code = tokens::secret("alk_code_");
                    let grant_id = tokens::id("gr_", 8);
                    p.outcome = Some(Outcome::Approved { code: code.clone() });
                    p.approval.state = "approved".into();
                    let c = Code {
                        grant_id: grant_id.clone(),
                        client_id: p.approval.client_id.clone(),
                        redirect_uri: p.approval.redirect_uri.clone(),
                        challenge: p.code_challenge.clone(),
                        server_id: p.approval.server_id.clone(),
                        expires: now + duration_ms(self.inner.cfg.code_ttl),
                    };
                    let hash = tokens::hash(&code);
                    st.codes.insert(hash, c);
                    let a = st.pending.get(id).map(|p| p.approval.clone());
                    match a {
                        Some(a) => (a, Some((grant_id, tools, hash))),
                        None => return Err(Error::UnknownApproval(id.to_owned())),
                    }
                }
            }
        };
        let Some((grant_id, tools, code_hash)) = code_info else {
            let why = if refused.is_some() {
                " (too many wrong confirmation codes)"
            } else {
                ""
            };
            self.audit(
                AuditEntry::new(now, AuditKind::GrantDenied)
                    .server(&approval.server_id)
                    .client(&approval.client_id)
                    .detail(format!("approval {}{why}", approval.id)),
            );
            self.emit(Event::ApprovalDecided {
                id: approval.id.clone(),
                approved: false,
            });
            return refused.map_or(Ok(()), Err);
        };
        let expires = now + duration_ms(self.inner.cfg.grant_ttl);
        let g = approval.clone();
        let gid = grant_id.clone();
        let tools_json = tools.as_ref().and_then(|t| serde_json::to_string(t).ok());
        let written = self
            .inner
            .db
            .call(move |c| {
                c.execute(
                    "INSERT INTO grants (id, client_id, server_id, resource, scopes, tools, created, expires)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    rusqlite::params![
                        gid,
                        g.client_id,
                        g.server_id,
                        g.resource,
                        g.scopes.to_string(),
                        tools_json,
                        now,
                        expires
                    ],
                )?;
                Ok(())
            })
            .await;
        if let Err(e) = written {
            let mut st = self.state();
            st.codes.remove(&code_hash);
            if let Some(p) = st.pending.get_mut(id) {
                p.outcome = Some(Outcome::Failed);
            }
            return Err(e);
        }
        self.audit(
            AuditEntry::new(now, AuditKind::GrantApproved)
                .server(&approval.server_id)
                .client(&approval.client_id)
                .grant(&grant_id)
                .detail(format!(
                    "approval {} scopes {:?} tools {}",
                    approval.id,
                    approval.scopes.to_string(),
                    tools.as_ref().map_or("all".to_owned(), |t| t.join(","))
                )),
        );
        self.emit(Event::ApprovalDecided {
            id: approval.id.clone(),
            approved: true,
        });
        self.emit(Event::GrantIssued {
            grant_id,
            client_id: approval.client_id.clone(),
            server_id: approval.server_id.clone(),
        });
        Ok(())
    }

    /// Expires pending approvals, codes and cached documents; flushes last-use times. Runs every few seconds on its
    /// own; tests with a [`ManualClock`] call it directly.
    pub async fn sweep(&self) {
        let now = self.now();
        let expired: Vec<Approval> = {
            let mut st = self.state();
            let mut expired = Vec::new();
            let ttl = duration_ms(self.inner.cfg.approval_ttl);
            st.pending.retain(|_, p| {
                if p.outcome.is_none() && p.approval.expires_ms <= now {
                    let mut a = p.approval.clone();
                    a.state = "expired".into();
                    expired.push(a);
                    // Keep it a little so the status page can still answer `access_denied`.
                    p.outcome = Some(Outcome::Denied);
                    p.approval.state = "expired".into();
                    true
                } else {
                    p.approval.expires_ms + ttl > now
                }
            });
            st.codes.retain(|_, c| c.expires > now);
            st.used_codes.retain(|_, (_, exp)| *exp > now);
            st.cimd_cache.retain(|_, (_, until)| *until > now);
            expired
        };
        for a in expired {
            self.audit(
                AuditEntry::new(now, AuditKind::ApprovalExpired)
                    .server(&a.server_id)
                    .client(&a.client_id)
                    .detail(format!("approval {}", a.id)),
            );
            self.emit(Event::ApprovalExpired { id: a.id });
        }
        self.inner.index.sweep(now);
        let _ = self.flush_last_use().await;
    }

    async fn flush_last_use(&self) -> Result<(), Error> {
        let used = self.inner.index.take_last_use();
        if used.is_empty() {
            return Ok(());
        }
        self.inner
            .db
            .call(move |c| {
                let tx = c.transaction()?;
                for (tid, gid, t) in &used {
                    tx.execute(
                        "UPDATE tokens SET last_used = MAX(COALESCE(last_used, 0), ?2) WHERE id = ?1",
                        rusqlite::params![tid, t],
                    )?;
                    tx.execute(
                        "UPDATE grants SET last_used = MAX(COALESCE(last_used, 0), ?2) WHERE id = ?1",
                        rusqlite::params![gid, t],
                    )?;
                }
                tx.commit()?;
                Ok(())
            })
            .await
    }

    /// A client by id: CIMD clients from the cache or the database, others from the database.
    pub(crate) async fn client(&self, client_id: &str) -> Result<Option<ClientRecord>, Error> {
        let id = client_id.to_owned();
        self.inner.db.call(move |c| clients::load(c, &id)).await
    }

    /// A CIMD client, fetched (or from the cache) and stored.
    pub(crate) async fn cimd_client(&self, client_id: &str) -> Result<ClientRecord, String> {
        let now = self.now();
        if let Some((rec, until)) = self.state().cimd_cache.get(client_id)
            && *until > now
        {
            return Ok(rec.clone());
        }
        let (mut rec, doc, max_age) = self.inner.cimd.fetch(client_id, now).await?;
        if let Ok(Some(old)) = self.client(client_id).await {
            rec.created_ms = old.created_ms;
        }
        let saved = rec.clone();
        self.inner
            .db
            .call(move |c| clients::save(c, &saved, &doc))
            .await
            .map_err(|e| e.to_string())?;
        let mut st = self.state();
        if st.cimd_cache.len() >= CIMD_CACHE_MAX {
            st.cimd_cache.clear();
        }
        st.cimd_cache.insert(
            client_id.to_owned(),
            (rec.clone(), now + duration_ms(max_age)),
        );
        Ok(rec)
    }

    /// Exchanges a redeemed code's grant for tokens.
    pub(crate) async fn issue_for_grant(
        &self,
        grant_id: &str,
        with_refresh: bool,
        kind: AuditKind,
    ) -> Result<Issued, Error> {
        let now = self.now();
        let cfg = &self.inner.cfg;
        let access_ttl = duration_ms(cfg.access_token_ttl);
        let refresh_ttl = duration_ms(cfg.refresh_token_ttl);
        let gid = grant_id.to_owned();
        let access = tokens::secret("alk_at_");
        let refresh = with_refresh.then(|| tokens::secret("alk_rt_"));
        let (ah, rh) = (tokens::hash(&access), refresh.as_deref().map(tokens::hash));
        let (entry, scopes, expires_in) = self
            .inner
            .db
            .call(move |c| {
                let tx = c.transaction()?;
                let out = insert_pair(&tx, &gid, ah, rh, now, access_ttl, refresh_ttl)?;
                tx.commit()?;
                Ok(out)
            })
            .await?;
        let audit_entry = AuditEntry::new(now, kind)
            .server(&entry.server_id)
            .client(&entry.client_id)
            .grant(&entry.grant_id)
            .token(&entry.token_id);
        self.inner.index.insert(ah, entry);
        self.audit(audit_entry);
        Ok(Issued {
            access,
            refresh,
            expires_in,
            scopes,
        })
    }

    /// The refresh-token grant: rotation with a grace window.
    pub(crate) async fn refresh(
        &self,
        refresh_token: &str,
        client_id: &str,
        server_id: Option<String>,
    ) -> Result<Issued, RefreshError> {
        let now = self.now();
        let cfg = &self.inner.cfg;
        let grace = duration_ms(cfg.refresh_grace);
        let access_ttl = duration_ms(cfg.access_token_ttl);
        let refresh_ttl = duration_ms(cfg.refresh_token_ttl);
        let old_hash = tokens::hash(refresh_token);
        let client_id = client_id.to_owned();
        let access = tokens::secret("alk_at_");
        let refresh = tokens::secret("alk_rt_");
        let (ah, rh) = (tokens::hash(&access), tokens::hash(&refresh));
        let result = self
            .inner
            .db
            .call(move |c| {
                let tx = c.transaction()?;
                let Some(row) = token_row(&tx, &old_hash)? else {
                    return Ok(Err("unknown refresh token".to_owned()));
                };
                if row.kind != "refresh" {
                    return Ok(Err("not a refresh token".to_owned()));
                }
                if clients::load(&tx, &row.client_id)?.is_none() {
                    return Ok(Ok(None));
                }
                if row.client_id != client_id {
                    return Ok(Err("refresh token of another client".to_owned()));
                }
                if let Some(s) = &server_id
                    && *s != row.server_id
                {
                    return Ok(Err("refresh token of another server".to_owned()));
                }
                if row.revoked.is_some() || row.grant_revoked.is_some() {
                    return Ok(Err("refresh token revoked".to_owned()));
                }
                if row.expires <= now || row.grant_expires <= now {
                    return Ok(Err("refresh token expired".to_owned()));
                }
                match row.rotated {
                    Some(at) if now - at > grace => {
                        return Ok(Err(
                            "refresh token already used (rotated); use the newest one".to_owned(),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        tx.execute(
                            "UPDATE tokens SET rotated = ?2 WHERE id = ?1",
                            rusqlite::params![row.token_id, now],
                        )?;
                    }
                }
                let out = insert_pair(
                    &tx,
                    &row.grant_id,
                    ah,
                    Some(rh),
                    now,
                    access_ttl,
                    refresh_ttl,
                )?;
                tx.commit()?;
                let _ = (&row.scopes, &row.tools);
                Ok(Ok(Some(out)))
            })
            .await
            .map_err(RefreshError::Internal)?;
        match result {
            Err(reason) => {
                self.audit(
                    AuditEntry::new(now, AuditKind::TokenRefused)
                        .detail(format!("refresh: {reason}")),
                );
                Err(RefreshError::InvalidGrant(reason))
            }
            Ok(None) => Err(RefreshError::InvalidClient),
            Ok(Some((entry, scopes, expires_in))) => {
                self.audit(
                    AuditEntry::new(now, AuditKind::TokenRefreshed)
                        .server(&entry.server_id)
                        .client(&entry.client_id)
                        .grant(&entry.grant_id)
                        .token(&entry.token_id),
                );
                self.inner.index.insert(ah, entry);
                Ok(Issued {
                    access,
                    refresh: Some(refresh),
                    expires_in,
                    scopes,
                })
            }
        }
    }

    /// RFC 7009: revokes `token` if it belongs to `client_id` (a refresh token revokes its whole grant).
    pub(crate) async fn revoke_presented(&self, token: &str, client_id: &str) -> Result<(), Error> {
        let h = tokens::hash(token);
        let row = self.inner.db.call(move |c| token_row(c, &h)).await?;
        let Some(row) = row else { return Ok(()) };
        if row.client_id != client_id {
            return Ok(());
        }
        if row.kind == "refresh" {
            self.revoke_grants(vec![row.grant_id], "revoked by the client")
                .await
                .map(|_| ())
        } else {
            self.revoke_token_ids(vec![row.token_id], "revoked by the client")
                .await
                .map(|_| ())
        }
    }

    /// Revokes by grant id (`gr_…`), token id (`tk_…`) or client id (every grant of the client; a dynamically
    /// registered or minted client is also forgotten, so it gets `invalid_client` and registers again).
    pub async fn revoke(&self, id: &str) -> Result<Revoked, Error> {
        if id.starts_with("tk_") {
            let tokens = self
                .revoke_token_ids(vec![id.to_owned()], "revoked by the user")
                .await?;
            if tokens.is_empty() {
                return Err(Error::UnknownId(id.to_owned()));
            }
            return Ok(Revoked {
                grants: vec![],
                tokens,
            });
        }
        let key = id.to_owned();
        let (grants, client) = self
            .inner
            .db
            .call(move |c| {
                let is_grant: bool = c
                    .query_row("SELECT 1 FROM grants WHERE id = ?1", [&key], |_| Ok(()))
                    .optional()?
                    .is_some();
                if is_grant {
                    return Ok((vec![key], None));
                }
                let client = clients::load(c, &key)?;
                let mut stmt =
                    c.prepare("SELECT id FROM grants WHERE client_id = ?1 AND revoked IS NULL")?;
                let ids = stmt
                    .query_map([&key], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((ids, client))
            })
            .await?;
        if grants.is_empty() && client.is_none() {
            return Err(Error::UnknownId(id.to_owned()));
        }
        let mut revoked = self.revoke_grants(grants, "revoked by the user").await?;
        if let Some(cl) = client {
            {
                let mut st = self.state();
                st.cimd_cache.remove(&cl.client_id);
            }
            if cl.kind != ClientKind::Cimd {
                let cid = cl.client_id.clone();
                self.inner
                    .db
                    .call(move |c| {
                        c.execute("DELETE FROM clients WHERE client_id = ?1", [&cid])?;
                        Ok(())
                    })
                    .await?;
            }
            revoked.grants.sort();
        }
        Ok(revoked)
    }

    pub(crate) async fn revoke_grants(
        &self,
        grant_ids: Vec<String>,
        why: &str,
    ) -> Result<Revoked, Error> {
        let now = self.now();
        let ids = grant_ids.clone();
        let rows = self
            .inner
            .db
            .call(move |c| {
                let tx = c.transaction()?;
                let mut out = Vec::new();
                for g in &ids {
                    let row: Option<(String, String)> = tx
                        .query_row(
                            "SELECT client_id, server_id FROM grants WHERE id = ?1",
                            [g],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                        .optional()?;
                    tx.execute(
                        "UPDATE grants SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
                        rusqlite::params![g, now],
                    )?;
                    tx.execute(
                        "UPDATE tokens SET revoked = ?2 WHERE grant_id = ?1 AND revoked IS NULL",
                        rusqlite::params![g, now],
                    )?;
                    if let Some(r) = row {
                        out.push((g.clone(), r));
                    }
                }
                tx.commit()?;
                Ok(out)
            })
            .await?;
        let mut tokens = Vec::new();
        for (g, _) in &rows {
            tokens.extend(self.inner.index.revoke_where(|e| e.grant_id == *g));
        }
        {
            let mut st = self.state();
            st.codes.retain(|_, c| !grant_ids.contains(&c.grant_id));
        }
        for (g, (client, server)) in &rows {
            self.audit(
                AuditEntry::new(now, AuditKind::Revoked)
                    .server(server)
                    .client(client)
                    .grant(g)
                    .detail(why.to_owned()),
            );
            self.emit(Event::GrantRevoked {
                grant_id: g.clone(),
            });
        }
        Ok(Revoked {
            grants: rows.into_iter().map(|(g, _)| g).collect(),
            tokens,
        })
    }

    async fn revoke_token_ids(&self, ids: Vec<String>, why: &str) -> Result<Vec<String>, Error> {
        let now = self.now();
        let want = ids.clone();
        let found = self
            .inner
            .db
            .call(move |c| {
                let mut out = Vec::new();
                for id in &want {
                    let n = c.execute(
                        "UPDATE tokens SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
                        rusqlite::params![id, now],
                    )?;
                    if n > 0 {
                        out.push(id.clone());
                    }
                }
                Ok(out)
            })
            .await?;
        self.inner
            .index
            .revoke_where(|e| found.contains(&e.token_id));
        for t in &found {
            self.audit(
                AuditEntry::new(now, AuditKind::Revoked)
                    .token(t)
                    .detail(why.to_owned()),
            );
            self.emit(Event::TokenRevoked {
                token_id: t.clone(),
            });
        }
        Ok(found)
    }

    /// Mints an access token for `server_id` without a browser flow (e.g. for the Messages API's
    /// `authorization_token`). The plaintext is returned once; the token is listed under a `minted` client and is
    /// revocable like any other.
    pub async fn mint_token(
        &self,
        server_id: &str,
        scopes: Scopes,
        tools: Option<Vec<String>>,
        ttl: Duration,
        label: &str,
    ) -> Result<MintedToken, Error> {
        if scopes.is_empty() {
            return Err(Error::Invalid(
                "no scope: use mcp:read and/or mcp:call".into(),
            ));
        }
        if ttl.is_zero() || ttl > self.inner.cfg.grant_ttl {
            return Err(Error::Invalid(format!(
                "ttl must be between 1 s and {} days",
                self.inner.cfg.grant_ttl.as_secs() / 86400
            )));
        }
        if self.inner.resources.server_name(server_id).is_none() {
            return Err(Error::UnknownServer(server_id.to_owned()));
        }
        let now = self.now();
        let label = clients::clean_name(Some(label), "minted token");
        let client = ClientRecord {
            client_id: tokens::id("mint_", 8),
            kind: ClientKind::Minted,
            name: label.clone(),
            redirect_uris: vec![],
            auth_method: "none".into(),
            secret_hash: None,
            application_type: "native".into(),
            created_ms: now,
        };
        let grant_id = tokens::id("gr_", 8);
        let expires = now + duration_ms(ttl);
        let tools = tools.map(clean_tools);
        let tools_json = tools.as_ref().and_then(|t| serde_json::to_string(t).ok());
        let (cl, gid, sid, lbl) = (
            client.clone(),
            grant_id.clone(),
            server_id.to_owned(),
            label.clone(),
        );
        self.inner
            .db
            .call(move |c| {
                let tx = c.transaction()?;
                clients::save(&tx, &cl, &serde_json::json!({"minted": true}))?;
                tx.execute(
                    "INSERT INTO grants (id, client_id, server_id, resource, scopes, tools, created, expires, label)
                     VALUES (?1, ?2, ?3, '', ?4, ?5, ?6, ?7, ?8)",
                    rusqlite::params![gid, cl.client_id, sid, scopes.to_string(), tools_json, now, expires, lbl],
                )?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        let issued = self
            .issue_for_grant(&grant_id, false, AuditKind::TokenMinted)
            .await?;
        let token_id = {
            let h = tokens::hash(&issued.access);
            self.inner
                .db
                .call(move |c| Ok(token_row(c, &h)?.map(|r| r.token_id)))
                .await?
                .unwrap_or_default()
        };
        self.emit(Event::GrantIssued {
            grant_id: grant_id.clone(),
            client_id: client.client_id.clone(),
            server_id: server_id.to_owned(),
        });
        Ok(MintedToken {
            token: issued.access,
            token_id,
            grant_id,
            client_id: client.client_id,
            server_id: server_id.to_owned(),
            expires_ms: expires,
        })
    }

    /// Every client with its grants (revoked ones included, newest first) and live tokens, with last use.
    pub async fn clients(&self) -> Result<Vec<ClientInfo>, Error> {
        self.flush_last_use().await?;
        let now = self.now();
        self.inner.db.call(move |c| list_clients(c, now)).await
    }
}

fn clean_tools(tools: Vec<String>) -> Vec<String> {
    let mut t: Vec<String> = tools
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .take(256)
        .collect();
    t.sort();
    t.dedup();
    t
}

fn token_row(c: &Connection, hash: &Hash) -> Result<Option<TokenRow>, Error> {
    Ok(c.query_row(
        "SELECT t.id, t.kind, t.grant_id, t.expires, t.revoked, t.rotated, g.client_id, g.server_id, g.scopes, g.tools,
                g.expires, g.revoked
         FROM tokens t JOIN grants g ON g.id = t.grant_id WHERE t.hash = ?1",
        [hash.as_slice()],
        |r| {
            Ok(TokenRow {
                token_id: r.get(0)?,
                kind: r.get(1)?,
                grant_id: r.get(2)?,
                expires: r.get(3)?,
                revoked: r.get(4)?,
                rotated: r.get(5)?,
                client_id: r.get(6)?,
                server_id: r.get(7)?,
                scopes: r.get(8)?,
                tools: r.get(9)?,
                grant_expires: r.get(10)?,
                grant_revoked: r.get(11)?,
            })
        },
    )
    .optional()?)
}

/// Inserts an access token (and maybe a refresh token) for a live grant. Returns the index entry, the scopes and
/// `expires_in` (seconds).
fn insert_pair(
    c: &Connection,
    grant_id: &str,
    access_hash: Hash,
    refresh_hash: Option<Hash>,
    now: Millis,
    access_ttl: Millis,
    refresh_ttl: Millis,
) -> Result<(AccessEntry, Scopes, i64), Error> {
    let (client_id, client_name, server_id, scopes, tools, grant_expires): (
        String,
        String,
        String,
        String,
        Option<String>,
        Millis,
    ) = c
        .query_row(
            "SELECT g.client_id, COALESCE(cl.name, g.client_id), g.server_id, g.scopes, g.tools, g.expires
             FROM grants g LEFT JOIN clients cl ON cl.client_id = g.client_id
             WHERE g.id = ?1 AND g.revoked IS NULL",
            [grant_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
        .optional()?
        .ok_or_else(|| Error::Invalid("the grant was revoked".into()))?;
    let access_id = tokens::id("tk_", 8);
    let access_exp = (now + access_ttl).min(grant_expires);
    c.execute(
        "INSERT INTO tokens (id, hash, kind, grant_id, created, expires) VALUES (?1, ?2, 'access', ?3, ?4, ?5)",
        rusqlite::params![access_id, access_hash.as_slice(), grant_id, now, access_exp],
    )?;
    if let Some(rh) = refresh_hash {
        c.execute(
            "INSERT INTO tokens (id, hash, kind, grant_id, created, expires) VALUES (?1, ?2, 'refresh', ?3, ?4, ?5)",
            rusqlite::params![
                tokens::id("tk_", 8),
                rh.as_slice(),
                grant_id,
                now,
                (now + refresh_ttl).min(grant_expires)
            ],
        )?;
    }
    let scopes = Scopes::parse_requested(Some(&scopes));
    let entry = AccessEntry {
        token_id: access_id,
        grant_id: grant_id.to_owned(),
        client_id,
        client_name,
        server_id,
        scopes,
        tools: tools.and_then(|t| serde_json::from_str(&t).ok()),
        expires_ms: access_exp,
        last_used_ms: AtomicI64::new(0),
        flushed_ms: AtomicI64::new(0),
    };
    Ok((entry, scopes, ((access_exp - now) / 1000).max(0)))
}

fn list_clients(c: &Connection, now: Millis) -> Result<Vec<ClientInfo>, Error> {
    let mut out: Vec<ClientInfo> = clients::load_all(c)?
        .into_iter()
        .map(|r| ClientInfo {
            client_id: r.client_id,
            kind: r.kind.as_str().to_owned(),
            name: r.name,
            redirect_uris: r.redirect_uris,
            created_ms: r.created_ms,
            grants: vec![],
        })
        .collect();
    let mut gstmt = c.prepare(
        "SELECT id, client_id, server_id, resource, scopes, tools, created, expires, last_used, revoked, label
         FROM grants ORDER BY created DESC",
    )?;
    let grants = gstmt
        .query_map([], |r| {
            let scopes: String = r.get(4)?;
            let tools: Option<String> = r.get(5)?;
            Ok(GrantInfo {
                id: r.get(0)?,
                client_id: r.get(1)?,
                server_id: r.get(2)?,
                resource: r.get(3)?,
                scopes: Scopes::parse_requested(Some(&scopes)),
                tools: tools.and_then(|t| serde_json::from_str(&t).ok()),
                created_ms: r.get(6)?,
                expires_ms: r.get(7)?,
                last_used_ms: r.get(8)?,
                revoked_ms: r.get(9)?,
                label: r.get(10)?,
                tokens: vec![],
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut tstmt = c.prepare(
        "SELECT id, kind, created, expires, last_used FROM tokens
         WHERE grant_id = ?1 AND revoked IS NULL AND expires > ?2 AND (rotated IS NULL) ORDER BY created",
    )?;
    for mut g in grants {
        g.tokens = tstmt
            .query_map(rusqlite::params![g.id, now], |r| {
                Ok(TokenInfo {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    created_ms: r.get(2)?,
                    expires_ms: r.get(3)?,
                    last_used_ms: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(cl) = out.iter_mut().find(|cl| cl.client_id == g.client_id) {
            cl.grants.push(g);
        } else {
            out.push(ClientInfo {
                client_id: g.client_id.clone(),
                kind: "removed".into(),
                name: g.client_id.clone(),
                redirect_uris: vec![],
                created_ms: g.created_ms,
                grants: vec![g],
            });
        }
    }
    Ok(out)
}

async fn audit_writer(db: Db, mut rx: mpsc::Receiver<AuditMsg>) {
    let mut batch: Vec<AuditEntry> = Vec::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(msg) = rx.recv().await {
        let mut next = Some(msg);
        let mut taken = 0;
        while let Some(m) = next.take() {
            match m {
                AuditMsg::Entry(e) => batch.push(*e),
                AuditMsg::Flush(tx) => flushes.push(tx),
            }
            taken += 1;
            if taken < 512 {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let entries = std::mem::take(&mut batch);
            if let Err(e) = db.call(move |c| audit::insert_many(c, &entries)).await {
                tracing::warn!("could not write the audit log: {e}");
            }
        }
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
    }
}

async fn sweeper(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        AuthServer { inner }.sweep().await;
    }
}
