//! Remote approval (`Config::remote_approval`): the approval page on a relay hostname for a browser elsewhere. It
//! shows a confirmation code and cannot approve; approving at the device needs that code. Driven over real HTTP on
//! loopback through stand-ins of the loopback, relay and Anthropic-tunnel ingresses.
#![allow(clippy::unwrap_used)]

mod support;

use http::{Method, StatusCode};
use serde_json::json;
use support::*;

use airlock_oauth::*;

const CB: &str = "https://claude.ai/api/mcp/auth_callback";
const RELAY_HOST: &str = "a.relay.test";
const RELAY_ORIGIN: &str = "https://a.relay.test";

async fn remote_harness() -> Harness {
    Harness::start_with(|c| c.remote_approval = true, None).await
}

/// GET on a stand-in host ingress as `host`.
async fn host_get(base: &str, host: &str, path: &str) -> Resp {
    request(
        Method::GET,
        &format!("{base}{path}"),
        &[("host", host)],
        None,
    )
    .await
}

struct Opened {
    browser: Browser,
    page: Resp,
    verifier: String,
    ticket: String,
    csrf: String,
}

/// The browser elsewhere opens the authorization URL on the relay hostname.
async fn open_remote(h: &Harness, client_id: &str, resource: &str) -> Opened {
    let (verifier, challenge) = pkce();
    let q = authorize_query(&[
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", CB),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("state", "st-remote"),
        ("resource", resource),
    ]);
    let mut browser = Browser::for_host(RELAY_HOST);
    let page = browser
        .get(&format!("{}/_airlock/oauth/authorize?{q}", h.relay_base))
        .await;
    let (ticket, csrf) = if page.status == StatusCode::OK {
        let f = form_of(&page.body);
        (f.ticket, f.csrf)
    } else {
        (String::new(), String::new())
    };
    Opened {
        browser,
        page,
        verifier,
        ticket,
        csrf,
    }
}

/// The `XXXX-XXXX` code the remote page shows.
fn code_on(html: &str) -> String {
    let code = between(html, "id=\"confirmation-code\">", "<");
    assert_eq!(code.len(), 9, "{code}");
    assert_eq!(&code[4..5], "-", "{code}");
    code
}

fn only_pending(h: &Harness) -> Approval {
    let list = h.server.approvals();
    assert_eq!(list.len(), 1, "{list:?}");
    list.into_iter().next().unwrap()
}

#[tokio::test]
async fn metadata_publishes_the_remote_page_only_on_the_relay_and_only_when_configured() {
    for remote in [false, true] {
        let h = Harness::start_with(|c| c.remote_approval = remote, None).await;
        let loopback = get(&format!(
            "{}/.well-known/oauth-authorization-server/a",
            h.base
        ))
        .await
        .json();
        assert_eq!(loopback["authorization_endpoint"], h.authorize_url());
        for path in [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
        ] {
            let relay = host_get(&h.relay_base, RELAY_HOST, path).await;
            assert_eq!(relay.status, StatusCode::OK, "{}", relay.body);
            let relay = relay.json();
            assert_eq!(relay["issuer"], RELAY_ORIGIN);
            assert_eq!(relay["token_endpoint"], format!("{RELAY_ORIGIN}/token"));
            assert_eq!(
                relay["registration_endpoint"],
                format!("{RELAY_ORIGIN}/register")
            );
            let want = if remote {
                format!("{RELAY_ORIGIN}/_airlock/oauth/authorize")
            } else {
                h.authorize_url()
            };
            assert_eq!(
                relay["authorization_endpoint"],
                want.as_str(),
                "remote {remote}"
            );
            // A browser cannot reach an Anthropic tunnel hostname: it always gets the loopback page.
            let tunnel = host_get(&h.tunnel_base, "a.tunnel.test", path).await.json();
            assert_eq!(tunnel["issuer"], "https://a.tunnel.test");
            assert_eq!(tunnel["authorization_endpoint"], h.authorize_url());
        }
        let client_id = register(&h, "a", "Remote", CB).await;
        let opened = open_remote(&h, &client_id, &format!("{RELAY_ORIGIN}/mcp")).await;
        let want = if remote {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(
            opened.page.status, want,
            "remote {remote}: {}",
            opened.page.body
        );
        for path in ["/_airlock/oauth/authorize", "/_airlock/oauth/style.css"] {
            let r = host_get(&h.tunnel_base, "a.tunnel.test", path).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path} on the tunnel");
        }
        assert_eq!(h.server.approvals().len(), usize::from(remote));
    }
}

#[tokio::test]
async fn the_remote_page_shows_a_code_has_no_approve_button_and_keeps_the_code_out_of_the_api() {
    let h = remote_harness().await;
    let mut events = h.server.subscribe();
    let client_id = register(&h, "a", "<script>alert(1)</script>Remote", CB).await;
    let mut o = open_remote(&h, &client_id, &format!("{RELAY_ORIGIN}/mcp")).await;
    assert_eq!(o.page.status, StatusCode::OK, "{}", o.page.body);
    let body = &o.page.body;
    let code = code_on(body);
    assert!(
        body.contains(&format!(
            "To allow this, confirm code <span class=\"code\" id=\"confirmation-code\">{code}</span> in Airlock on \
             your computer"
        )),
        "{body}"
    );
    // No way to approve from here: only Deny, with the CSRF token; the page refreshes on its status URL.
    assert!(!body.contains("value=\"approve\""), "{body}");
    assert!(!body.contains("narrow=1"), "{body}");
    assert!(body.contains("value=\"deny\""), "{body}");
    assert!(body.contains(&format!(
        "<meta http-equiv=\"refresh\" content=\"3;url=/_airlock/oauth/status/{}\">",
        o.ticket
    )));
    // Same hardening as the loopback page.
    let csp = o.page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("script-src"), "{csp}");
    assert_eq!(o.page.header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(o.page.header("cache-control").as_deref(), Some("no-store"));
    let cookie = o.page.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Secure"),
        "{cookie}"
    );
    assert!(
        !body.contains("<script>"),
        "the client's name must be inert text"
    );
    assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt;Remote"));

    // The pending approval says remote, and never carries the code (list, event, its JSON).
    let a = only_pending(&h);
    assert!(a.remote);
    assert_eq!(a.server_id, "srv_a");
    assert_eq!(a.resource, format!("{RELAY_ORIGIN}/mcp"));
    let plain = code.replace('-', "");
    let listed = serde_json::to_string(&h.server.approvals()).unwrap();
    assert!(listed.contains("\"remote\":true"), "{listed}");
    let Ok(ev) = events.recv().await else {
        panic!("no event")
    };
    let ev = serde_json::to_string(&ev).unwrap();
    assert!(
        ev.contains("approval_pending") && ev.contains("\"remote\":true"),
        "{ev}"
    );
    for text in [&listed, &ev] {
        assert!(
            !text.contains(&code) && !text.contains(&plain),
            "the code leaked: {text}"
        );
    }

    // The browser elsewhere posts "approve" with a valid CSRF token: refused, still pending.
    let action = format!("{}/_airlock/oauth/decide/{}", h.relay_base, o.ticket);
    let r = o
        .browser
        .post(
            &action,
            &[("csrf", o.csrf.as_str()), ("decision", "approve")],
            Some(RELAY_ORIGIN),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(
        r.body
            .contains("only be approved in Airlock on the computer"),
        "{}",
        r.body
    );
    assert_eq!(only_pending(&h).state, "pending");
    // Refreshing shows the same code (one code per request).
    let again = o
        .browser
        .get(&format!(
            "{}/_airlock/oauth/status/{}",
            h.relay_base, o.ticket
        ))
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(code_on(&again.body), code);
    // `?narrow=1` does not turn it into an approval form either.
    let narrow = o
        .browser
        .get(&format!(
            "{}/_airlock/oauth/status/{}?narrow=1",
            h.relay_base, o.ticket
        ))
        .await;
    assert!(
        !narrow.body.contains("value=\"approve\""),
        "{}",
        narrow.body
    );

    // Each request gets its own random code.
    let other = open_remote(&h, &client_id, &format!("{RELAY_ORIGIN}/mcp")).await;
    assert_ne!(code_on(&other.page.body), code);
}

#[tokio::test]
async fn the_remote_page_validates_like_the_loopback_one() {
    let h = remote_harness().await;
    let client_id = register(&h, "a", "Remote", CB).await;
    // A resource of another server than the hostname's: refused, no approval.
    let o = open_remote(&h, &client_id, "https://b.relay.test/mcp").await;
    assert_eq!(o.page.status, StatusCode::BAD_REQUEST, "{}", o.page.body);
    assert!(o.page.body.contains("another server than this hostname"));
    // Unregistered redirect URI: shown, never redirected.
    let (_, challenge) = pkce();
    let q = authorize_query(&[
        ("response_type", "code"),
        ("client_id", &client_id),
        ("redirect_uri", "https://evil.example/cb"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("resource", &format!("{RELAY_ORIGIN}/mcp")),
    ]);
    let r = host_get(
        &h.relay_base,
        RELAY_HOST,
        &format!("/_airlock/oauth/authorize?{q}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.header("location").is_none());
    // PKCE plain: answered to the (registered) client with iss.
    let q = authorize_query(&[
        ("response_type", "code"),
        ("client_id", &client_id),
        ("redirect_uri", CB),
        ("code_challenge", &challenge),
        ("code_challenge_method", "plain"),
        ("resource", &format!("{RELAY_ORIGIN}/mcp")),
    ]);
    let r = host_get(
        &h.relay_base,
        RELAY_HOST,
        &format!("/_airlock/oauth/authorize?{q}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let loc = query_of(&r.location());
    assert_eq!(loc["error"], "invalid_request");
    assert_eq!(loc["iss"], RELAY_ORIGIN);
    // A subresource request cannot raise an approval.
    let q = authorize_query(&[
        ("response_type", "code"),
        ("client_id", &client_id),
        ("redirect_uri", CB),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("resource", &format!("{RELAY_ORIGIN}/mcp")),
    ]);
    let r = request(
        Method::GET,
        &format!("{}/_airlock/oauth/authorize?{q}", h.relay_base),
        &[("host", RELAY_HOST), ("sec-fetch-dest", "image")],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(h.server.approvals().is_empty());
    // A cross-site deny is refused (origin), and so is one without the cookie's CSRF token.
    let mut o = open_remote(&h, &client_id, &format!("{RELAY_ORIGIN}/mcp")).await;
    let action = format!("{}/_airlock/oauth/decide/{}", h.relay_base, o.ticket);
    let r = o
        .browser
        .post(
            &action,
            &[("csrf", o.csrf.as_str()), ("decision", "deny")],
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let mut stranger = Browser::for_host(RELAY_HOST);
    let r = stranger
        .post(
            &action,
            &[("csrf", o.csrf.as_str()), ("decision", "deny")],
            Some(RELAY_ORIGIN),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(only_pending(&h).state, "pending");
    // The browser itself can deny (no code needed); the status URL then redirects with access_denied.
    let r = o
        .browser
        .post(
            &action,
            &[("csrf", o.csrf.as_str()), ("decision", "deny")],
            Some(RELAY_ORIGIN),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let done = o
        .browser
        .get(&format!(
            "{}/_airlock/oauth/status/{}",
            h.relay_base, o.ticket
        ))
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    let q = query_of(&done.location());
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "st-remote");
    assert_eq!(q["iss"], RELAY_ORIGIN);
    assert!(h.server.approvals().is_empty());
}

#[tokio::test]
async fn approving_a_remote_request_needs_the_code_it_shows() {
    let h = remote_harness().await;
    let mut events = h.server.subscribe();
    let client_id = register(&h, "a", "Remote", CB).await;
    let mut o = open_remote(&h, &client_id, &format!("{RELAY_ORIGIN}/mcp")).await;
    let code = code_on(&o.page.body);
    let id = only_pending(&h).id;
    let _pending = events.recv().await.unwrap();

    let approve = |code: Option<&str>| Decision::Approve {
        tools: Some(vec!["echo".into()]),
        code: code.map(str::to_owned),
    };
    let e = h.server.decide(&id, approve(None)).await.unwrap_err();
    assert!(matches!(e, Error::CodeRequired(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("this request was opened in a browser elsewhere: enter the code it shows"),
        "{e}"
    );
    let e = h.server.decide(&id, approve(Some("  "))).await.unwrap_err();
    assert!(matches!(e, Error::CodeRequired(_)), "{e:?}");
    // A wrong code (one symbol off) is refused and counted.
    let mut wrong: Vec<char> = code.chars().collect();
    wrong[0] = if wrong[0] == 'A' { 'B' } else { 'A' };
    let wrong: String = wrong.into_iter().collect();
    let e = h
        .server
        .decide(&id, approve(Some(&wrong)))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::WrongCode { left: 4, .. }), "{e:?}");
    assert!(e.to_string().contains("enter the code it shows"), "{e}");
    assert_eq!(only_pending(&h).state, "pending");
    assert!(events.try_recv().is_err(), "no decision yet");

    // The right code, typed in lower case without the dash: approved, narrowed to one tool.
    let typed = code.replace('-', " ").to_lowercase();
    h.server.decide(&id, approve(Some(&typed))).await.unwrap();
    let Ok(Event::ApprovalDecided { approved: true, .. }) = events.recv().await else {
        panic!("no decision event")
    };
    let done = o
        .browser
        .get(&format!(
            "{}/_airlock/oauth/status/{}",
            h.relay_base, o.ticket
        ))
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let loc = done.location();
    assert!(loc.as_str().starts_with(CB), "{loc}");
    let q = query_of(&loc);
    assert_eq!(q["state"], "st-remote");
    assert_eq!(q["iss"], RELAY_ORIGIN);
    // The relay hostname's token endpoint exchanges the code.
    let tok = request(
        Method::POST,
        &format!("{}/token", h.relay_base),
        &[
            ("host", RELAY_HOST),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        Some(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("grant_type", "authorization_code"),
                    ("code", q["code"].as_str()),
                    ("redirect_uri", CB),
                    ("client_id", client_id.as_str()),
                    ("code_verifier", o.verifier.as_str()),
                    ("resource", &format!("{RELAY_ORIGIN}/mcp")),
                ])
                .finish()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!(tok.status, StatusCode::OK, "{}", tok.body);
    let access = tok.json()["access_token"].as_str().unwrap().to_owned();
    let allowed = h.server.verify("srv_a", &access).unwrap();
    assert_eq!(allowed.tools, Some(vec!["echo".to_owned()]));
    assert_eq!(
        h.server.verify("srv_b", &access),
        Err(Rejection::WrongResource)
    );
    // Decided once: the code does not reopen it.
    let e = h
        .server
        .decide(&id, approve(Some(&code)))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyDecided(_)), "{e:?}");
}

#[tokio::test]
async fn five_wrong_codes_deny_the_request() {
    let h = remote_harness().await;
    let mut events = h.server.subscribe();
    let client_id = register(&h, "a", "Remote", CB).await;
    let mut o = open_remote(&h, &client_id, &format!("{RELAY_ORIGIN}/mcp")).await;
    let code = code_on(&o.page.body);
    let id = only_pending(&h).id;
    let _pending = events.recv().await.unwrap();
    let wrong = if code.starts_with("ZZZZ") {
        "YYYY-YYYY"
    } else {
        "ZZZZ-ZZZZ"
    };
    for left in (1..MAX_WRONG_CODES).rev() {
        let e = h
            .server
            .decide(&id, approve_with_code(wrong))
            .await
            .unwrap_err();
        match e {
            Error::WrongCode { left: l, .. } => assert_eq!(l, left),
            other => panic!("{other:?}"),
        }
    }
    let e = h
        .server
        .decide(&id, approve_with_code(wrong))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TooManyWrongCodes(_)), "{e:?}");
    assert!(e.to_string().contains("denied after 5 wrong codes"), "{e}");
    assert!(h.server.approvals().is_empty(), "no longer pending");
    let Ok(Event::ApprovalDecided {
        approved: false, ..
    }) = events.recv().await
    else {
        panic!("no denial event")
    };
    // Even the right code cannot approve it now.
    let e = h
        .server
        .decide(&id, approve_with_code(code.clone()))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyDecided(_)), "{e:?}");
    let done = o
        .browser
        .get(&format!(
            "{}/_airlock/oauth/status/{}",
            h.relay_base, o.ticket
        ))
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    let q = query_of(&done.location());
    assert_eq!(q["error"], "access_denied");
    assert!(
        q["error_description"].contains("wrong confirmation codes"),
        "{q:?}"
    );
    let denied = h
        .server
        .audit_log(AuditQuery {
            kind: Some(AuditKind::GrantDenied),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(denied.len(), 1);
    let detail = denied[0].detail.clone().unwrap_or_default();
    assert!(detail.contains("wrong confirmation codes"), "{detail}");
    assert!(!detail.contains(&code.replace('-', "")), "{detail}");
}

#[tokio::test]
async fn control_api_asks_for_the_code_with_422_and_lists_remote_without_it() {
    let h = remote_harness().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let app: axum::Router = control_router(h.server.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client_id = register(&h, "a", "Remote", CB).await;
    let o = open_remote(&h, &client_id, &format!("{RELAY_ORIGIN}/mcp")).await;
    let code = code_on(&o.page.body);
    let list = get(&format!("{api}/v1/approvals")).await;
    let v = list.json();
    assert_eq!(v[0]["remote"], true, "{v}");
    assert!(!list.body.contains(&code) && !list.body.contains(&code.replace('-', "")));
    let id = v[0]["id"].as_str().unwrap().to_owned();
    let url = format!("{api}/v1/approvals/{id}/approve");
    let r = post_json(&url, &json!({})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("this request was opened in a browser elsewhere: enter the code it shows"),
        "{}",
        r.body
    );
    let r = request(Method::POST, &url, &[], None).await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "no body: {}",
        r.body
    );
    let r = post_json(&url, &json!({"code": "2222-2222"})).await;
    if code != "2222-2222" {
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .starts_with("wrong code")
        );
    }
    let r = post_json(
        &url,
        &json!({"code": code.to_lowercase(), "tools": ["echo"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = post_json(&url, &json!({"code": code})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn loopback_approvals_are_unchanged_with_remote_approval_on() {
    let h = remote_harness().await;
    let client_id = register(&h, "a", "Local", CB).await;
    let (_, challenge) = pkce();
    let q = authorize_query(&[
        ("response_type", "code"),
        ("client_id", &client_id),
        ("redirect_uri", CB),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("state", "st-local"),
        ("resource", &h.resource("a")),
    ]);
    let mut browser = Browser::default();
    let page = browser.get(&format!("{}?{q}", h.authorize_url())).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("value=\"approve\""));
    assert!(!page.body.contains("confirmation-code"));
    let a = only_pending(&h);
    assert!(!a.remote);
    // The loopback page approves with its form, no code involved.
    let form = form_of(&page.body);
    let r = browser
        .post(
            &format!("{}{}", h.base, form.action),
            &[("csrf", form.csrf.as_str()), ("decision", "approve")],
            Some(&h.base),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let done = browser
        .get(&format!("{}/_airlock/oauth/status/{}", h.base, form.ticket))
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert!(query_of(&done.location()).contains_key("code"));
    // And through the API without a code (a code sent along is ignored).
    let _ = browser.get(&format!("{}?{q}", h.authorize_url())).await;
    let a = only_pending(&h);
    h.server
        .decide(&a.id, approve_with_code("whatever"))
        .await
        .unwrap();
}
