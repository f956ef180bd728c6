//! The web UI's side of the control API: the buildless files of `ui/` (embedded at build time), served from the API's
//! own origin with a strict CSP, and browser sessions.
//!
//! A browser never sees the API token. `airlock ui` asks the agent for a one-time login code (bearer-authenticated)
//! and opens `http://127.0.0.1:<port>/#code=…`; the fragment never reaches a server log, the page removes it at once
//! and trades the code for an `HttpOnly; SameSite=Strict` session cookie.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use subtle::ConstantTimeEq;

#[derive(rust_embed::Embed)]
#[folder = "../../ui"]
struct UiFiles;

pub const SESSION_COOKIE: &str = "airlock_session";
const CODE_TTL: Duration = Duration::from_secs(120);
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Bounds on outstanding codes and sessions: a flood of `airlock ui` calls cannot grow memory without limit.
const MAX_CODES: usize = 16;
const MAX_SESSIONS: usize = 64;

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// One-time login codes and live browser sessions (in memory: a restart logs browsers out).
#[derive(Debug, Default)]
pub struct Sessions {
    codes: Mutex<HashMap<String, Instant>>,
    sessions: Mutex<HashMap<String, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn prune(map: &mut HashMap<String, Instant>, max: usize) {
    let now = Instant::now();
    map.retain(|_, expiry| *expiry > now);
    while map.len() >= max {
        let Some(oldest) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) else {
            break;
        };
        map.remove(&oldest);
    }
}

impl Sessions {
    /// A fresh one-time code, valid for two minutes.
    pub fn new_code(&self) -> String {
        let code = crate::home::random_token();
        let mut codes = lock(&self.codes);
        prune(&mut codes, MAX_CODES);
        codes.insert(code.clone(), Instant::now() + CODE_TTL);
        code
    }

    /// Consumes a code (single use) and returns a new session id.
    pub fn redeem(&self, code: &str) -> Option<String> {
        let mut codes = lock(&self.codes);
        let found = codes
            .iter()
            .find(|(k, expiry)| {
                bool::from(k.as_bytes().ct_eq(code.as_bytes())) && **expiry > Instant::now()
            })
            .map(|(k, _)| k.clone())?;
        codes.remove(&found);
        drop(codes);
        let session = crate::home::random_token();
        let mut sessions = lock(&self.sessions);
        prune(&mut sessions, MAX_SESSIONS);
        sessions.insert(session.clone(), Instant::now() + SESSION_TTL);
        Some(session)
    }

    /// Whether the request carries a live session cookie.
    pub fn check(&self, headers: &HeaderMap) -> bool {
        let Some(presented) = session_cookie(headers) else {
            return false;
        };
        let sessions = lock(&self.sessions);
        let now = Instant::now();
        sessions.iter().any(|(k, expiry)| {
            *expiry > now && bool::from(k.as_bytes().ct_eq(presented.as_bytes()))
        })
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
}

pub fn session_cookie_header(session: &str) -> String {
    format!(
        "{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

/// Serves an embedded UI file with security headers, or 404.
pub fn asset(path: &str) -> Response<Body> {
    let path = path.trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    let Some(file) = UiFiles::get(path) else {
        let mut resp = Response::new(Body::from("not found"));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return resp;
    };
    let mut resp = Response::new(Body::from(file.data.into_owned()));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_single_use_and_sessions_check() {
        let s = Sessions::default();
        let code = s.new_code();
        assert!(s.redeem("wrong").is_none());
        let session = s.redeem(&code).unwrap();
        assert!(s.redeem(&code).is_none(), "a code works once");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {SESSION_COOKIE}={session}")).unwrap(),
        );
        assert!(s.check(&h));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("airlock_session=forged"),
        );
        assert!(!s.check(&h));
    }

    #[test]
    fn outstanding_codes_are_bounded() {
        let s = Sessions::default();
        let first = s.new_code();
        for _ in 0..MAX_CODES {
            s.new_code();
        }
        assert!(lock(&s.codes).len() <= MAX_CODES);
        assert!(s.redeem(&first).is_none(), "the oldest code was evicted");
    }

    #[test]
    fn index_is_served_with_csp() {
        let resp = asset("/");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(asset("/nope.js").status(), StatusCode::NOT_FOUND);
        assert_eq!(asset("../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }
}
