//! Remote approval end to end: the real agent with `[oauth] remote_approval = true` on the embedded relay. A client
//! discovers the authorization server through the server's relay URL (inner TLS under the Airlock CA, SNI = the relay
//! hostname), which names the approval page on that same hostname; the browser elsewhere opens it and reads the
//! confirmation code; `airlock approve <id>` without the code (and with a wrong one) is refused, with the code it
//! succeeds; the status URL redirects with an authorization code the relay hostname's token endpoint exchanges for a
//! token that works on the server through the relay. The loopback flow (used by `expose`) is unchanged. The web UI
//! (`tests/ui/remote-approval.test.mjs`, headless Chromium) asks for the code next to Approve and shows the API's
//! message for a wrong one.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_e2e::oauth::{base64url, pct};
use airlock_e2e::relay::{client_trusting, inner_tls};
use airlock_e2e::{Agent, browser, raw_http, wait_for};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self, what: &str) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {self:?}"))
    }
}

/// The server's relay URL: `https://<host>:<port><path>`, dialed at 127.0.0.1 (the embedded relay), SNI and `Host`
/// the real hostname, only the Airlock CA trusted.
struct RelaySite {
    origin: String,
    host: String,
    authority: String,
    path: String,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl RelaySite {
    fn new(url: &str, ca_pem: &str) -> Self {
        let rest = url.strip_prefix("https://").unwrap();
        let (authority, path) = rest.split_at(rest.find('/').unwrap());
        let (host, port) = authority.rsplit_once(':').unwrap();
        RelaySite {
            origin: format!("https://{authority}"),
            host: host.to_owned(),
            authority: authority.to_owned(),
            path: path.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], port.parse().unwrap())),
            tls: client_trusting(ca_pem),
        }
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let mut s = inner_tls(self.addr, &self.host, self.tls.clone(), None)
            .await
            .unwrap_or_else(|e| panic!("TLS to {} as {}: {e}", self.addr, self.host));
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.authority
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or(""));
        s.write_all(req.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("{method} {path}: no complete answer in 30 s"),
            }
        }
        parse(&buf).unwrap_or_else(|| {
            panic!(
                "{method} {path}: malformed answer {:?}",
                String::from_utf8_lossy(&buf)
            )
        })
    }

    async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], None).await
    }
}

fn parse(buf: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut s = body;
        while let Some((size, rest)) = s.split_once("\r\n") {
            let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            if n == 0 || rest.len() < n {
                break;
            }
            out.push_str(&rest[..n]);
            s = rest[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_owned()
    };
    Some(Reply {
        status,
        headers,
        body,
    })
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)? + i;
    Some(&s[i..j])
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn query_param(location: &str, name: &str) -> Option<String> {
    let q = location.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            let mut out = Vec::new();
            let b = v.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%'
                    && i + 2 < b.len()
                    && let Ok(x) = u8::from_str_radix(&v[i + 1..i + 3], 16)
                {
                    out.push(x);
                    i += 3;
                    continue;
                }
                out.push(if b[i] == b'+' { b' ' } else { b[i] });
                i += 1;
            }
            String::from_utf8_lossy(&out).into_owned()
        })
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e2e-remote","version":"0"}}}"#;

/// A running agent with remote approval, its exposed `time` server's relay site, and a registered client.
struct World {
    agent: Agent,
    site: RelaySite,
    relay_url: String,
    client_id: String,
    rt: tokio::runtime::Runtime,
}

/// One authorization request opened on the relay hostname's page.
struct Opened {
    id: String,
    code: String,
    verifier: String,
    state: String,
    status_path: String,
}

fn world() -> World {
    let home = browser::time_servers_home(&[("time", &["--local-timezone", "UTC"])]);
    home.write_airlock_config(
        "[discovery]\nprobe_running = false\n\n[oauth]\nremote_approval = true\n",
    );
    let agent = Agent::start(home);
    agent.wait_server("time", Duration::from_secs(30));
    // `expose` obtains a token through the loopback page, approved without any code: loopback is unchanged.
    let exposed = agent.expose("time");
    let loopback_meta = {
        let (addr, _) = airlock_e2e::split_url(&exposed.url);
        let host = addr.to_string();
        let r = raw_http(
            addr,
            "GET",
            "/.well-known/oauth-authorization-server/time",
            &[("Host", host.as_str())],
            None,
        );
        assert_eq!(r.status, 200, "{r:?}");
        serde_json::from_str::<Value>(&r.body).unwrap()
    };
    assert_eq!(
        loopback_meta["authorization_endpoint"],
        format!(
            "http://127.0.0.1:{}/_airlock/oauth/authorize",
            agent.gateway_port
        ),
        "{loopback_meta}"
    );

    let urls = wait_for(Duration::from_secs(60), "the server's relay URL", || {
        let v = agent.cli_json(&["url", "time", "--json"]);
        (v["relay_url"].is_string() && v["relay_ca_file"].is_string()).then_some(v)
    });
    let relay_url = urls["relay_url"].as_str().unwrap().to_owned();
    let ca_pem = std::fs::read_to_string(urls["relay_ca_file"].as_str().unwrap()).unwrap();
    let site = RelaySite::new(&relay_url, &ca_pem);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Without a token the server answers 401 pointing at its metadata on the relay hostname.
    let r = rt.block_on(site.request(
        "POST",
        &site.path,
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ],
        Some(INITIALIZE),
    ));
    assert_eq!(r.status, 401, "{r:?}");
    let challenge = r.header("www-authenticate").unwrap_or_default().to_owned();
    assert!(
        challenge.contains(&format!(
            "{}/.well-known/oauth-protected-resource",
            site.origin
        )),
        "{challenge}"
    );

    // Discovery through the relay URL: the page is on this hostname; token and registration too.
    let prm = rt
        .block_on(site.get(&format!(
            "/.well-known/oauth-protected-resource{}",
            site.path
        )))
        .json("protected-resource metadata");
    assert_eq!(prm["resource"], relay_url.as_str(), "{prm}");
    assert_eq!(
        prm["authorization_servers"][0],
        site.origin.as_str(),
        "{prm}"
    );
    let asm = rt
        .block_on(site.get("/.well-known/oauth-authorization-server"))
        .json("authorization-server metadata");
    assert_eq!(asm["issuer"], site.origin.as_str(), "{asm}");
    let authorize = format!("{}/_airlock/oauth/authorize", site.origin);
    assert_eq!(asm["authorization_endpoint"], authorize.as_str(), "{asm}");
    assert_eq!(
        asm["token_endpoint"],
        format!("{}/token", site.origin).as_str()
    );

    // Dynamic registration on the relay hostname.
    let reg = rt.block_on(
        site.request(
            "POST",
            "/register",
            &[("Content-Type", "application/json")],
            Some(
                &json!({
                    "client_name": "remote e2e client",
                    "redirect_uris": [REDIRECT_URI],
                    "token_endpoint_auth_method": "none",
                })
                .to_string(),
            ),
        ),
    );
    assert_eq!(reg.status, 201, "{reg:?}");
    let client_id = reg.json("registration")["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    World {
        agent,
        site,
        relay_url,
        client_id,
        rt,
    }
}

impl World {
    /// The browser elsewhere opens the page: a code, no approve button; the person at the device sees the request
    /// as remote, without the code.
    fn open(&self) -> Opened {
        let (site, rt) = (&self.site, &self.rt);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let verifier = format!("{nanos:0>48x}-remote-approval-verifier");
        let challenge = base64url(&Sha256::digest(verifier.as_bytes()));
        let state = format!("st{nanos:x}");
        let query = form(&[
            ("response_type", "code"),
            ("client_id", &self.client_id),
            ("redirect_uri", REDIRECT_URI),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("state", &state),
            ("resource", &self.relay_url),
            ("scope", "mcp:read mcp:call"),
        ]);
        let page = rt.block_on(site.get(&format!("/_airlock/oauth/authorize?{query}")));
        assert_eq!(page.status, 200, "{page:?}");
        let code = between(&page.body, "id=\"confirmation-code\">", "<")
            .unwrap_or_else(|| panic!("no code on the page: {}", page.body))
            .to_owned();
        assert_eq!(code.len(), 9, "{code}");
        assert!(
            page.body.contains("To allow this, confirm code")
                && page.body.contains("in Airlock on your computer"),
            "{}",
            page.body
        );
        assert!(!page.body.contains("value=\"approve\""), "{}", page.body);
        assert!(
            page.header("content-security-policy")
                .is_some_and(|c| c.contains("frame-ancestors 'none'")),
            "{page:?}"
        );
        let status_path = between(&page.body, "content=\"3;url=", "\"")
            .unwrap_or_else(|| panic!("no refresh to the status URL: {}", page.body))
            .to_owned();

        let list = self.agent.cli_json(&["approvals", "--json"]);
        let approval = list
            .as_array()
            .and_then(|l| l.iter().find(|a| a["client_id"] == self.client_id.as_str()))
            .unwrap_or_else(|| panic!("no pending approval for {}: {list}", self.client_id))
            .clone();
        assert_eq!(approval["remote"], true, "{approval}");
        assert_eq!(approval["resource"], self.relay_url.as_str(), "{approval}");
        let plain = code.replace('-', "");
        assert!(
            !list.to_string().contains(&code) && !list.to_string().contains(&plain),
            "the code is listed: {list}"
        );
        Opened {
            id: approval["id"].as_str().unwrap().to_owned(),
            code,
            verifier,
            state,
            status_path,
        }
    }

    /// After the approval: the status URL redirects to the client with a code, the relay hostname's token endpoint
    /// exchanges it, and the token works on the server through the relay.
    fn finish(&self, o: &Opened) {
        let (site, rt) = (&self.site, &self.rt);
        let done = rt.block_on(site.get(&o.status_path));
        assert_eq!(done.status, 303, "{done:?}");
        let location = done.header("location").unwrap().to_owned();
        assert!(location.starts_with(REDIRECT_URI), "{location}");
        assert_eq!(
            query_param(&location, "state").as_deref(),
            Some(o.state.as_str())
        );
        assert_eq!(
            query_param(&location, "iss").as_deref(),
            Some(site.origin.as_str()),
            "{location}"
        );
        let auth_code = query_param(&location, "code").unwrap_or_else(|| panic!("{location}"));
        let tok = rt.block_on(site.request(
            "POST",
            "/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(&form(&[
                ("grant_type", "authorization_code"),
                ("code", &auth_code),
                ("redirect_uri", REDIRECT_URI),
                ("client_id", &self.client_id),
                ("code_verifier", &o.verifier),
                ("resource", &self.relay_url),
            ])),
        ));
        assert_eq!(tok.status, 200, "{tok:?}");
        let token = tok.json("token")["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let bearer = format!("Bearer {token}");
        let init = rt.block_on(site.request(
            "POST",
            &site.path,
            &[
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
                ("Authorization", &bearer),
            ],
            Some(INITIALIZE),
        ));
        assert_eq!(init.status, 200, "{init:?}");
        assert!(init.body.contains("serverInfo"), "{init:?}");
        let granted = self.agent.cli_json(&[
            "audit",
            "--json",
            "--kind",
            "grant_approved",
            "--client",
            &self.client_id,
        ]);
        assert_eq!(granted.as_array().map(Vec::len), Some(1), "{granted}");
    }
}

fn wrong_code_for(code: &str) -> &'static str {
    if code.starts_with("ZZZZ") {
        "YYYY-YYYY"
    } else {
        "ZZZZ-ZZZZ"
    }
}

#[test]
fn a_browser_elsewhere_opens_the_relay_page_and_the_person_confirms_its_code() {
    let w = world();
    let o = w.open();
    let human = w.agent.cli(&["approvals"]);
    assert!(
        human.stdout.contains("opened in a browser elsewhere"),
        "the listing says a code is needed: {human:?}"
    );

    // Approving without the code, or with a wrong one, fails and says what to do.
    let out = w.agent.cli(&["approve", &o.id]);
    assert_ne!(out.code, Some(0), "approved without the code: {out:?}");
    assert!(
        out.stderr
            .contains("this request was opened in a browser elsewhere: enter the code it shows"),
        "{out:?}"
    );
    let out = w
        .agent
        .cli(&["approve", &o.id, "--code", wrong_code_for(&o.code)]);
    assert_ne!(out.code, Some(0), "approved with a wrong code: {out:?}");
    assert!(out.stderr.contains("wrong code"), "{out:?}");
    let still = w.rt.block_on(w.site.get(&o.status_path));
    assert_eq!(still.status, 200, "still pending: {still:?}");

    // With the code (typed in lower case): approved; the page's status URL redirects to the client.
    let out = w
        .agent
        .cli(&["approve", &o.id, "--code", &o.code.to_lowercase()]);
    assert_eq!(out.code, Some(0), "{out:?}\n{}", w.agent.stderr_log());
    w.finish(&o);
}

#[test]
fn the_web_ui_asks_for_the_code_and_shows_a_wrong_one_refused() {
    browser::require_tools();
    let w = world();
    let o = w.open();
    let summary = browser::run_script(
        &w.agent,
        "remote-approval.test.mjs",
        "ui-remote-approval",
        &["--id", o.id.as_str()],
        &[("AIRLOCK_TEST_CONFIRM_CODE", o.code.as_str())],
    );
    assert!(
        summary["wrong_code_message"]
            .as_str()
            .is_some_and(|m| m.contains("wrong code")),
        "{summary}"
    );
    // The approval the UI made is a real one: the client gets its code and a working token.
    w.finish(&o);
}
