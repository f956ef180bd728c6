//! OAuth clients: client ID metadata documents, dynamic registration, minted-token holders; redirect URI rules.

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::types::{Error, Millis};

/// How a client came to be known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// `client_id` is the URL of its metadata document.
    Cimd,
    /// RFC 7591 dynamic registration.
    Dynamic,
    /// Holder of a minted token (no browser flow).
    Minted,
}

impl ClientKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::Cimd => "cimd",
            ClientKind::Dynamic => "dynamic",
            ClientKind::Minted => "minted",
        }
    }
    fn parse(s: &str) -> ClientKind {
        match s {
            "cimd" => ClientKind::Cimd,
            "minted" => ClientKind::Minted,
            _ => ClientKind::Dynamic,
        }
    }
}

/// A known client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientRecord {
    pub client_id: String,
    pub kind: ClientKind,
    /// Self-asserted display name (attacker-controlled: always rendered as text).
    pub name: String,
    pub redirect_uris: Vec<String>,
    /// `none`, `client_secret_post` or `client_secret_basic`.
    pub auth_method: String,
    #[serde(skip)]
    pub secret_hash: Option<Vec<u8>>,
    pub application_type: String,
    pub created_ms: Millis,
}

/// Longest client name kept (longer ones are cut).
pub(crate) const MAX_NAME_CHARS: usize = 100;
pub(crate) const MAX_REDIRECT_URIS: usize = 10;
pub(crate) const MAX_URI_LEN: usize = 2000;

pub(crate) fn clean_name(name: Option<&str>, fallback: &str) -> String {
    let cleaned: String = name
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        fallback.to_owned()
    } else {
        cleaned.to_owned()
    }
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Checks one registered redirect URI: absolute, no fragment, and `https` or `http` on a loopback host.
pub(crate) fn validate_redirect_uri(uri: &str) -> Result<(), String> {
    if uri.len() > MAX_URI_LEN {
        return Err("redirect URI too long".into());
    }
    let url = Url::parse(uri).map_err(|e| format!("redirect URI {uri:?} is not a URL: {e}"))?;
    if url.fragment().is_some() {
        return Err(format!("redirect URI {uri:?} must not have a fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("redirect URI {uri:?} must not carry credentials"));
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if is_loopback_host(&url) => Ok(()),
        _ => Err(format!(
            "redirect URI {uri:?} must be https, or http on localhost/127.0.0.1/[::1]"
        )),
    }
}

/// Is `requested` one of `registered`? Exact string match, except that for `http` loopback URIs the port is ignored
/// (RFC 8252 §7.3): `http://localhost:53123/callback` matches a registered `http://localhost/callback`. The host
/// itself must match (`localhost` is not `127.0.0.1`).
pub(crate) fn redirect_matches(registered: &[String], requested: &str) -> bool {
    if registered.iter().any(|r| r == requested) {
        return true;
    }
    let Ok(req) = Url::parse(requested) else {
        return false;
    };
    if req.scheme() != "http" || !is_loopback_host(&req) || req.fragment().is_some() {
        return false;
    }
    if !req.username().is_empty() || req.password().is_some() {
        return false;
    }
    registered.iter().any(|r| {
        let Ok(reg) = Url::parse(r) else {
            return false;
        };
        reg.scheme() == "http"
            && is_loopback_host(&reg)
            && reg.host_str() == req.host_str()
            && reg.path() == req.path()
            && reg.query() == req.query()
            && reg.username().is_empty()
            && reg.password().is_none()
    })
}

/// The host (with port if any) of a redirect URI, for display.
pub(crate) fn redirect_host(uri: &str) -> String {
    Url::parse(uri)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            })
        })
        .unwrap_or_else(|| "(invalid)".to_owned())
}

/// `application_type` for DCR answers: `native` when every redirect URI is loopback, else `web`.
pub(crate) fn application_type(uris: &[String], requested: Option<&str>) -> String {
    match requested {
        Some(t @ ("native" | "web")) => t.to_owned(),
        _ => {
            let native = uris
                .iter()
                .all(|u| Url::parse(u).map(|u| is_loopback_host(&u)).unwrap_or(false));
            if native { "native" } else { "web" }.to_owned()
        }
    }
}

pub(crate) fn save(
    c: &Connection,
    r: &ClientRecord,
    metadata: &serde_json::Value,
) -> Result<(), Error> {
    c.execute(
        "INSERT INTO clients (client_id, kind, name, redirect_uris, auth_method, secret_hash, application_type,
           metadata, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(client_id) DO UPDATE SET name = excluded.name, redirect_uris = excluded.redirect_uris,
           auth_method = excluded.auth_method, application_type = excluded.application_type,
           metadata = excluded.metadata",
        rusqlite::params![
            r.client_id,
            r.kind.as_str(),
            r.name,
            serde_json::to_string(&r.redirect_uris).unwrap_or_else(|_| "[]".into()),
            r.auth_method,
            r.secret_hash,
            r.application_type,
            metadata.to_string(),
            r.created_ms,
        ],
    )?;
    Ok(())
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClientRecord> {
    let uris: String = r.get(3)?;
    let kind: String = r.get(1)?;
    Ok(ClientRecord {
        client_id: r.get(0)?,
        kind: ClientKind::parse(&kind),
        name: r.get(2)?,
        redirect_uris: serde_json::from_str(&uris).unwrap_or_default(),
        auth_method: r.get(4)?,
        secret_hash: r.get(5)?,
        application_type: r.get(6)?,
        created_ms: r.get(7)?,
    })
}

const COLUMNS: &str =
    "client_id, kind, name, redirect_uris, auth_method, secret_hash, application_type, created";

pub(crate) fn load(c: &Connection, client_id: &str) -> Result<Option<ClientRecord>, Error> {
    Ok(c.query_row(
        &format!("SELECT {COLUMNS} FROM clients WHERE client_id = ?1"),
        [client_id],
        from_row,
    )
    .optional()?)
}

pub(crate) fn load_all(c: &Connection) -> Result<Vec<ClientRecord>, Error> {
    let mut stmt = c.prepare(&format!("SELECT {COLUMNS} FROM clients ORDER BY created"))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Drops the oldest dynamic clients that never got a grant until at most `keep` dynamic clients remain.
pub(crate) fn prune_dynamic(c: &Connection, keep: usize) -> Result<(), Error> {
    let count: i64 = c.query_row(
        "SELECT COUNT(*) FROM clients WHERE kind = 'dynamic'",
        [],
        |r| r.get(0),
    )?;
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    if count >= keep {
        c.execute(
            "DELETE FROM clients WHERE client_id IN (SELECT client_id FROM clients WHERE kind = 'dynamic'
               AND client_id NOT IN (SELECT client_id FROM grants) ORDER BY created LIMIT ?1)",
            [count - keep + 1],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exact_match_or_loopback_port_leniency() {
        let reg = v(&[
            "https://claude.ai/api/mcp/auth_callback",
            "http://localhost/callback",
            "http://127.0.0.1/callback",
        ]);
        assert!(redirect_matches(
            &reg,
            "https://claude.ai/api/mcp/auth_callback"
        ));
        assert!(redirect_matches(&reg, "http://localhost:53124/callback"));
        assert!(redirect_matches(&reg, "http://127.0.0.1:8080/callback"));
        assert!(redirect_matches(&reg, "http://localhost/callback"));
        // No leniency for https, other paths, other hosts, fragments.
        assert!(!redirect_matches(
            &reg,
            "https://claude.ai/api/mcp/auth_callback/"
        ));
        assert!(!redirect_matches(
            &reg,
            "https://claude.ai:444/api/mcp/auth_callback"
        ));
        assert!(!redirect_matches(
            &reg,
            "https://claude.ai/api/mcp/auth_callback?x=1"
        ));
        assert!(!redirect_matches(&reg, "http://localhost:1/callback/evil"));
        assert!(!redirect_matches(
            &reg,
            "http://localhost.evil.com:1/callback"
        ));
        assert!(!redirect_matches(&reg, "http://[::1]:1/callback"));
        assert!(!redirect_matches(&reg, "http://localhost:1/callback#x"));
        assert!(!redirect_matches(&reg, "http://user@localhost:1/callback"));
        assert!(!redirect_matches(
            &reg,
            "https://evil.example/api/mcp/auth_callback"
        ));
    }

    #[test]
    fn registered_uris_must_be_https_or_loopback() {
        assert!(validate_redirect_uri("https://app.example/cb").is_ok());
        assert!(validate_redirect_uri("http://localhost/cb").is_ok());
        assert!(validate_redirect_uri("http://127.0.0.1:9/cb").is_ok());
        assert!(validate_redirect_uri("http://[::1]/cb").is_ok());
        assert!(validate_redirect_uri("http://app.example/cb").is_err());
        assert!(validate_redirect_uri("https://app.example/cb#f").is_err());
        assert!(validate_redirect_uri("javascript:alert(1)").is_err());
        assert!(validate_redirect_uri("cb").is_err());
        assert_eq!(redirect_host("http://localhost:1234/cb"), "localhost:1234");
        assert_eq!(
            application_type(&v(&["http://localhost/cb"]), None),
            "native"
        );
        assert_eq!(application_type(&v(&["https://a.example/cb"]), None), "web");
    }

    #[test]
    fn names_are_cleaned() {
        assert_eq!(clean_name(Some("  a\u{0}b\n "), "x"), "ab");
        assert_eq!(clean_name(None, "x"), "x");
        assert_eq!(
            clean_name(Some(&"n".repeat(500)), "x").len(),
            MAX_NAME_CHARS
        );
    }
}
