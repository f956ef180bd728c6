//! The audit log: grants, denials, token issue/refresh/revoke, registrations and MCP calls.

use rusqlite::{Connection, params_from_iter, types::Value};
use serde::{Deserialize, Serialize};

use crate::types::{Error, McpCall, Millis, duration_ms};

/// What an audit entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A pending approval was raised.
    ApprovalRequested,
    /// The person approved: a grant exists.
    GrantApproved,
    /// The person denied.
    GrantDenied,
    /// A pending approval expired undecided.
    ApprovalExpired,
    /// An access/refresh pair was issued for a code.
    TokenIssued,
    /// A refresh token was exchanged.
    TokenRefreshed,
    /// A token was minted for a caller without a browser.
    TokenMinted,
    /// A grant or token was revoked.
    Revoked,
    /// A client registered dynamically.
    ClientRegistered,
    /// A token request was refused (reason in `detail`).
    TokenRefused,
    /// One MCP request.
    McpCall,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::ApprovalRequested => "approval_requested",
            AuditKind::GrantApproved => "grant_approved",
            AuditKind::GrantDenied => "grant_denied",
            AuditKind::ApprovalExpired => "approval_expired",
            AuditKind::TokenIssued => "token_issued",
            AuditKind::TokenRefreshed => "token_refreshed",
            AuditKind::TokenMinted => "token_minted",
            AuditKind::Revoked => "revoked",
            AuditKind::ClientRegistered => "client_registered",
            AuditKind::TokenRefused => "token_refused",
            AuditKind::McpCall => "mcp_call",
        }
    }

    pub fn parse(s: &str) -> Option<AuditKind> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

/// One audit entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub ts_ms: Millis,
    pub kind: String,
    pub server_id: Option<String>,
    pub client_id: Option<String>,
    pub grant_id: Option<String>,
    pub token_id: Option<String>,
    pub method: Option<String>,
    pub tool: Option<String>,
    pub status: Option<u16>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub duration_ms: Option<u64>,
    pub ingress: Option<String>,
    pub detail: Option<String>,
}

/// Filters for [`crate::AuthServer::audit_log`]; newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct AuditQuery {
    pub server_id: Option<String>,
    pub client_id: Option<String>,
    pub kind: Option<AuditKind>,
    pub since_ms: Option<Millis>,
    /// Default 100, at most 1000.
    pub limit: Option<u32>,
}

impl AuditEntry {
    pub(crate) fn new(ts_ms: Millis, kind: AuditKind) -> Self {
        Self {
            ts_ms,
            kind: kind.as_str().to_owned(),
            ..Self::default()
        }
    }

    pub(crate) fn from_call(ts_ms: Millis, c: McpCall) -> Self {
        Self {
            ts_ms,
            kind: AuditKind::McpCall.as_str().to_owned(),
            server_id: Some(c.server_id),
            client_id: c.client_id,
            grant_id: c.grant_id,
            method: Some(c.method),
            tool: c.tool,
            status: Some(c.status),
            bytes_in: Some(c.bytes_in),
            bytes_out: Some(c.bytes_out),
            duration_ms: Some(u64::try_from(duration_ms(c.duration)).unwrap_or(0)),
            ingress: Some(c.ingress.as_str().to_owned()),
            ..Self::default()
        }
    }

    pub(crate) fn server(mut self, s: &str) -> Self {
        self.server_id = Some(s.to_owned());
        self
    }
    pub(crate) fn client(mut self, s: &str) -> Self {
        self.client_id = Some(s.to_owned());
        self
    }
    pub(crate) fn grant(mut self, s: &str) -> Self {
        self.grant_id = Some(s.to_owned());
        self
    }
    pub(crate) fn token(mut self, s: &str) -> Self {
        self.token_id = Some(s.to_owned());
        self
    }
    pub(crate) fn detail(mut self, s: impl Into<String>) -> Self {
        self.detail = Some(s.into());
        self
    }
}

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

pub(crate) fn insert(c: &Connection, e: &AuditEntry) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO audit (ts, kind, server_id, client_id, grant_id, token_id, method, tool, status, bytes_in,
         bytes_out, duration_ms, ingress, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(rusqlite::params![
        e.ts_ms,
        e.kind,
        e.server_id,
        e.client_id,
        e.grant_id,
        e.token_id,
        e.method,
        e.tool,
        e.status,
        opt_i64(e.bytes_in),
        opt_i64(e.bytes_out),
        opt_i64(e.duration_ms),
        e.ingress,
        e.detail,
    ])?;
    Ok(())
}

pub(crate) fn insert_many(c: &mut Connection, entries: &[AuditEntry]) -> Result<(), Error> {
    let tx = c.transaction()?;
    for e in entries {
        insert(&tx, e)?;
    }
    tx.commit()?;
    Ok(())
}

pub(crate) fn query(c: &Connection, q: &AuditQuery) -> Result<Vec<AuditEntry>, Error> {
    let mut sql = String::from(
        "SELECT id, ts, kind, server_id, client_id, grant_id, token_id, method, tool, status, bytes_in, bytes_out,
         duration_ms, ingress, detail FROM audit WHERE 1=1",
    );
    let mut args: Vec<Value> = Vec::new();
    if let Some(s) = &q.server_id {
        args.push(Value::Text(s.clone()));
        sql.push_str(&format!(" AND server_id = ?{}", args.len()));
    }
    if let Some(s) = &q.client_id {
        args.push(Value::Text(s.clone()));
        sql.push_str(&format!(" AND client_id = ?{}", args.len()));
    }
    if let Some(k) = q.kind {
        args.push(Value::Text(k.as_str().to_owned()));
        sql.push_str(&format!(" AND kind = ?{}", args.len()));
    }
    if let Some(t) = q.since_ms {
        args.push(Value::Integer(t));
        sql.push_str(&format!(" AND ts >= ?{}", args.len()));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt.query_map(params_from_iter(args), |r| {
        let u = |i: usize| -> rusqlite::Result<Option<u64>> {
            Ok(r.get::<_, Option<i64>>(i)?
                .map(|v| u64::try_from(v).unwrap_or(0)))
        };
        Ok(AuditEntry {
            id: r.get(0)?,
            ts_ms: r.get(1)?,
            kind: r.get(2)?,
            server_id: r.get(3)?,
            client_id: r.get(4)?,
            grant_id: r.get(5)?,
            token_id: r.get(6)?,
            method: r.get(7)?,
            tool: r.get(8)?,
            status: r
                .get::<_, Option<i64>>(9)?
                .map(|v| u16::try_from(v).unwrap_or(0)),
            bytes_in: u(10)?,
            bytes_out: u(11)?,
            duration_ms: u(12)?,
            ingress: r.get(13)?,
            detail: r.get(14)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
