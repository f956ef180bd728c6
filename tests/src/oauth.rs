//! The OAuth 2.1 flow a real MCP client runs against a running agent, driven over plain HTTP: protected-resource
//! metadata → authorization-server metadata → dynamic client registration → the loopback authorization page (PKCE
//! S256, `resource`) → approval through the control API (what the person at the device does) → the status URL's
//! redirect with the code → token exchange. The access token it returns is an ordinary token of the product, issued
//! for one server; nothing here bypasses the authorization server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{Agent, RawResponse, raw_http, split_url};

/// Tokens obtained through the flow.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// The scopes granted (`mcp:read mcp:call`).
    pub scope: String,
    /// The dynamically registered client.
    pub client_id: String,
    /// The resource the token is bound to (the server's loopback URL).
    pub resource: String,
}

/// Redirect URI registered by the harness client (nothing listens there: the code is read from the `Location`).
pub const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";

/// Runs the whole flow for the server at `server_url` (its loopback URL, `http://127.0.0.1:<port>/<slug>/mcp`),
/// approving the request with all scopes through `agent`'s control API, and returns the tokens.
pub fn obtain_token(agent: &Agent, server_url: &str) -> Tokens {
    obtain_token_with_scope(agent, server_url, "mcp:read mcp:call")
}

/// [`obtain_token`] asking for `scope`.
pub fn obtain_token_with_scope(agent: &Agent, server_url: &str, scope: &str) -> Tokens {
    let (addr, path) = split_url(server_url);
    let host = addr.to_string();
    let get = |p: &str| raw_http(addr, "GET", p, &[("Host", host.as_str())], None);

    // 1. Protected-resource metadata (RFC 9728, path-specific URL) names the resource and its issuer.
    let prm = json_of(
        &get(&format!("/.well-known/oauth-protected-resource{path}")),
        200,
        "protected-resource metadata",
    );
    let resource = str_field(&prm, "resource");
    assert_eq!(
        resource, server_url,
        "the metadata names another resource: {prm}"
    );
    let issuer = prm["authorization_servers"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no authorization server in {prm}"))
        .to_string();

    // 2. Authorization-server metadata (RFC 8414: the well-known segment inserted before the issuer's path).
    let (_, issuer_path) = split_url(&issuer);
    let issuer_path = if issuer_path == "/" {
        String::new()
    } else {
        issuer_path
    };
    let asm = json_of(
        &get(&format!(
            "/.well-known/oauth-authorization-server{issuer_path}"
        )),
        200,
        "authorization-server metadata",
    );
    assert_eq!(asm["issuer"], issuer.as_str(), "{asm}");
    assert!(
        asm["code_challenge_methods_supported"]
            .as_array()
            .is_some_and(|m| m.iter().any(|v| v == "S256")),
        "S256 not offered: {asm}"
    );
    let registration = str_field(&asm, "registration_endpoint");
    let authorization = str_field(&asm, "authorization_endpoint");
    let token_endpoint = str_field(&asm, "token_endpoint");

    // 3. Dynamic client registration (RFC 7591), a public client.
    let reg_body = json!({
        "client_name": "Airlock e2e client",
        "redirect_uris": [REDIRECT_URI],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    })
    .to_string();
    let (reg_addr, reg_path) = split_url(&registration);
    let reg = json_of(
        &raw_http(
            reg_addr,
            "POST",
            &reg_path,
            &[
                ("Host", &reg_addr.to_string()),
                ("Content-Type", "application/json"),
            ],
            Some(&reg_body),
        ),
        201,
        "client registration",
    );
    let client_id = str_field(&reg, "client_id");

    // 4. The authorization request on the loopback page: PKCE S256, state, resource.
    let verifier = random_urlsafe(48);
    let challenge = base64url(&Sha256::digest(verifier.as_bytes()));
    let state = random_urlsafe(16);
    let query = [
        ("response_type", "code"),
        ("client_id", client_id.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", state.as_str()),
        ("resource", resource.as_str()),
        ("scope", scope),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", pct(v)))
    .collect::<Vec<_>>()
    .join("&");
    let (auth_addr, auth_path) = split_url(&authorization);
    let auth_host = auth_addr.to_string();
    let page = raw_http(
        auth_addr,
        "GET",
        &format!("{auth_path}?{query}"),
        &[("Host", auth_host.as_str())],
        None,
    );
    assert_eq!(page.status, 200, "authorization page: {page:?}");
    let status_path = status_url_in(&page.body)
        .unwrap_or_else(|| panic!("no status URL on the authorization page: {}", page.body));

    // 5. The person approves: the pending request of this client, through the control API.
    let approval = pending_approval_of(agent, &client_id);
    let id = str_field(&approval, "id");
    assert_eq!(approval["resource"], resource.as_str(), "{approval}");
    let decided = api(
        agent,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some("{}"),
    );
    assert_eq!(decided.status, 200, "approve: {decided:?}");

    // 6. The status URL now redirects to the client with the code (and `iss`, RFC 9207).
    let done = raw_http(
        auth_addr,
        "GET",
        &status_path,
        &[("Host", auth_host.as_str())],
        None,
    );
    assert_eq!(done.status, 303, "status URL after approval: {done:?}");
    let location = done
        .header("location")
        .unwrap_or_else(|| panic!("no Location: {done:?}"))
        .to_string();
    let (target, params) = location
        .split_once('?')
        .unwrap_or_else(|| panic!("no query in the redirect {location}"));
    assert_eq!(target, REDIRECT_URI, "redirected elsewhere: {location}");
    let param = |name: &str| {
        params
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| unpct(v))
    };
    assert_eq!(
        param("state").as_deref(),
        Some(state.as_str()),
        "{location}"
    );
    assert_eq!(param("iss").as_deref(), Some(issuer.as_str()), "{location}");
    let code = param("code").unwrap_or_else(|| panic!("no code in {location}"));

    // 7. Token exchange with the verifier.
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("client_id", client_id.as_str()),
        ("code_verifier", verifier.as_str()),
        ("resource", resource.as_str()),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", pct(v)))
    .collect::<Vec<_>>()
    .join("&");
    let (tok_addr, tok_path) = split_url(&token_endpoint);
    let tok = json_of(
        &raw_http(
            tok_addr,
            "POST",
            &tok_path,
            &[
                ("Host", &tok_addr.to_string()),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            Some(&form),
        ),
        200,
        "token exchange",
    );
    assert_eq!(
        tok["token_type"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("bearer"),
        "{tok}"
    );
    Tokens {
        access_token: str_field(&tok, "access_token"),
        refresh_token: tok["refresh_token"].as_str().map(str::to_string),
        scope: tok["scope"].as_str().unwrap_or(scope).to_string(),
        client_id,
        resource,
    }
}

/// A control-API request with the agent's control token.
pub fn api(agent: &Agent, method: &str, path: &str, body: Option<&str>) -> RawResponse {
    let info = agent.info();
    let addr: SocketAddr = info.api_addr();
    let host = addr.to_string();
    let bearer = format!("Bearer {}", info.token);
    let mut headers = vec![("Host", host.as_str()), ("Authorization", bearer.as_str())];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    raw_http(addr, method, path, &headers, body)
}

/// Waits (up to 20 s) for the pending approval raised for `client_id`.
fn pending_approval_of(agent: &Agent, client_id: &str) -> Value {
    let start = Instant::now();
    loop {
        let r = api(agent, "GET", "/v1/approvals", None);
        let list: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        if let Some(a) = list
            .as_array()
            .and_then(|l| l.iter().find(|a| a["client_id"] == client_id))
        {
            return a.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no pending approval for {client_id}: {} {}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn json_of(r: &RawResponse, status: u16, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", r.body))
}

fn str_field(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .to_string()
}

/// The `/_airlock/oauth/status/<ticket>` path the pending page refreshes to.
fn status_url_in(body: &str) -> Option<String> {
    let i = body.find("/_airlock/oauth/status/")?;
    let rest = &body[i..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || "/_-.".contains(c)))
        .unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

fn random_urlsafe(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let mut f = std::fs::File::open("/dev/urandom").unwrap_or_else(|e| panic!("/dev/urandom: {e}"));
    std::io::Read::read_exact(&mut f, &mut buf).unwrap_or_else(|e| panic!("/dev/urandom: {e}"));
    base64url(&buf)
}

/// Base64url without padding (RFC 7636 appendix A).
pub fn base64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn unpct(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc4648_vectors_without_padding() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(input.as_bytes()), want);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn percent_round_trip() {
        let s = "http://127.0.0.1:9/a b?c=d&e";
        assert_eq!(unpct(&pct(s)), s);
    }
}
