//! The authorization server over real HTTP on loopback: full flows with real clients, the attack list, Claude's
//! client shapes, client metadata documents over HTTPS under a test CA.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::IpAddr;
use std::time::Duration;

use airlock_oauth::*;
use http::{Method, StatusCode};
use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, RefreshToken,
    RevocationUrl, Scope, TokenResponse, TokenUrl,
};
use support::*;

const CB: &str = "http://127.0.0.1:40111/callback";

struct Authorized {
    code: String,
    verifier: String,
    location: url::Url,
}

/// Browser opens the authorize URL, the person approves through the API, the status URL redirects with a code.
async fn authorize_and_approve(
    h: &Harness,
    client_id: &str,
    redirect: &str,
    slug: &str,
    decision: Decision,
) -> Authorized {
    let (verifier, challenge) = pkce();
    let q = authorize_query(&[
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("state", "st-123"),
        ("resource", &h.resource(slug)),
    ]);
    let mut browser = Browser::default();
    let page = browser.get(&format!("{}?{q}", h.authorize_url())).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let form = form_of(&page.body);
    let pending = h
        .server
        .approvals()
        .into_iter()
        .find(|a| a.client_id == client_id)
        .expect("a pending approval");
    h.server.decide(&pending.id, decision).await.unwrap();
    let status = browser
        .get(&format!("{}/_airlock/oauth/status/{}", h.base, form.ticket))
        .await;
    assert_eq!(status.status, StatusCode::SEE_OTHER, "{}", status.body);
    let location = status.location();
    let q = query_of(&location);
    Authorized {
        code: q.get("code").cloned().unwrap_or_default(),
        verifier,
        location,
    }
}

async fn exchange(
    h: &Harness,
    slug: &str,
    client_id: &str,
    a: &Authorized,
    redirect: &str,
    resource: &str,
) -> Resp {
    post_form(
        &format!("{}/{slug}/token", h.base),
        &[
            ("grant_type", "authorization_code"),
            ("code", &a.code),
            ("redirect_uri", redirect),
            ("client_id", client_id),
            ("code_verifier", &a.verifier),
            ("resource", resource),
        ],
    )
    .await
}

async fn mcp(h: &Harness, slug: &str, token: &str) -> Resp {
    request(
        Method::POST,
        &h.resource(slug),
        &[("authorization", &format!("Bearer {token}"))],
        None,
    )
    .await
}

#[tokio::test]
async fn full_flow_with_the_oauth2_crate_discovery_dcr_authorize_token_refresh_revoke() {
    let h = Harness::start().await;
    let mut events = h.server.subscribe();
    // Discovery: RFC 8414 path-inserted, OIDC path-inserted and OIDC path-appended all answer the same document.
    let md = get(&format!(
        "{}/.well-known/oauth-authorization-server/a",
        h.base
    ))
    .await;
    assert_eq!(md.status, StatusCode::OK);
    let md = md.json();
    assert_eq!(md["issuer"], h.issuer("a"));
    assert_eq!(md["authorization_endpoint"], h.authorize_url());
    assert_eq!(md["token_endpoint"], format!("{}/token", h.issuer("a")));
    assert_eq!(
        md["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(md["client_id_metadata_document_supported"], true);
    assert_eq!(md["authorization_response_iss_parameter_supported"], true);
    assert_eq!(md["response_types_supported"], serde_json::json!(["code"]));
    assert!(
        md["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&"none".into())
    );
    for url in [
        format!("{}/.well-known/openid-configuration/a", h.base),
        format!("{}/a/.well-known/openid-configuration", h.base),
    ] {
        assert_eq!(get(&url).await.json(), md, "{url}");
    }
    // DCR.
    let reg = post_json(
        md["registration_endpoint"].as_str().unwrap(),
        &serde_json::json!({"client_name": "Rust oauth2", "redirect_uris": [CB], "token_endpoint_auth_method": "none"}),
    )
    .await;
    assert_eq!(reg.status, StatusCode::CREATED, "{}", reg.body);
    let reg = reg.json();
    assert_eq!(reg["application_type"], "native");
    assert!(reg.get("client_secret").is_none());
    let client_id = reg["client_id"].as_str().unwrap().to_owned();

    let client = BasicClient::new(ClientId::new(client_id.clone()))
        .set_auth_uri(AuthUrl::new(md["authorization_endpoint"].as_str().unwrap().into()).unwrap())
        .set_token_uri(TokenUrl::new(md["token_endpoint"].as_str().unwrap().into()).unwrap())
        .set_revocation_url(
            RevocationUrl::new(md["revocation_endpoint"].as_str().unwrap().into()).unwrap(),
        )
        .set_redirect_uri(RedirectUrl::new(CB.into()).unwrap());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (auth_url, csrf_state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("mcp:read".into()))
        .add_scope(Scope::new("mcp:call".into()))
        .set_pkce_challenge(challenge)
        .add_extra_param("resource", h.resource("a"))
        .url();
    let mut browser = Browser::default();
    let page = browser.get(auth_url.as_str()).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Rust oauth2"));
    let Ok(Event::ApprovalPending { approval }) = events.recv().await else {
        panic!("pending event")
    };
    assert_eq!(approval.client_id, client_id);
    assert_eq!(approval.server_id, "srv_a");
    assert_eq!(approval.redirect_host, "127.0.0.1:40111");
    assert_eq!(approval.scopes, Scopes::ALL);
    assert_eq!(h.server.approvals().len(), 1);
    // Until someone decides, the status URL keeps showing the page (which refreshes itself).
    let form = form_of(&page.body);
    let waiting = browser
        .get(&format!("{}/_airlock/oauth/status/{}", h.base, form.ticket))
        .await;
    assert_eq!(waiting.status, StatusCode::OK);
    assert!(
        waiting
            .body
            .contains("<meta http-equiv=\"refresh\" content=\"3;url=/_airlock/oauth/status/")
    );
    // Approve via the API (the UI/CLI path).
    h.server.decide(&approval.id, approve_all()).await.unwrap();
    assert!(matches!(
        h.server.decide(&approval.id, Decision::Deny).await,
        Err(Error::AlreadyDecided(_))
    ));
    let done = browser
        .get(&format!("{}/_airlock/oauth/status/{}", h.base, form.ticket))
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    let loc = done.location();
    assert_eq!(
        format!(
            "{}://{}:{}{}",
            loc.scheme(),
            loc.host_str().unwrap(),
            loc.port().unwrap(),
            loc.path()
        ),
        CB
    );
    let q = query_of(&loc);
    assert_eq!(q["state"], *csrf_state.secret());
    assert_eq!(q["iss"], h.issuer("a"));
    let token = client
        .exchange_code(AuthorizationCode::new(q["code"].clone()))
        .set_pkce_verifier(verifier)
        .add_extra_param("resource", h.resource("a"))
        .request_async(&oauth2_http)
        .await
        .unwrap();
    assert_eq!(token.scopes().unwrap().len(), 2);
    let access = token.access_token().secret().clone();
    let refresh = token.refresh_token().unwrap().clone();
    assert!(access.starts_with("alk_at_"));
    let ok = mcp(&h, "a", &access).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.json()["client_name"], "Rust oauth2");
    // Refresh (rotation).
    let refreshed = client
        .exchange_refresh_token(&refresh)
        .add_extra_param("resource", h.resource("a"))
        .request_async(&oauth2_http)
        .await
        .unwrap();
    let access2 = refreshed.access_token().secret().clone();
    let refresh2 = refreshed.refresh_token().unwrap().clone();
    assert_ne!(refresh2.secret(), refresh.secret());
    assert_eq!(mcp(&h, "a", &access2).await.status, StatusCode::OK);
    // Listing shows the client, its grant and last use.
    let clients = h.server.clients().await.unwrap();
    let c = clients.iter().find(|c| c.client_id == client_id).unwrap();
    assert_eq!(c.kind, "dynamic");
    assert_eq!(c.grants.len(), 1);
    assert_eq!(c.grants[0].server_id, "srv_a");
    assert_eq!(c.grants[0].last_used_ms, Some(T0));
    // Revoke the refresh token: the whole grant ends.
    // (The oauth2 crate refuses a non-https revocation URL, so this request is made by hand, as RFC 7009 says.)
    let revoked = post_form(
        md["revocation_endpoint"].as_str().unwrap(),
        &[
            ("token", refresh2.secret()),
            ("token_type_hint", "refresh_token"),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(revoked.status, StatusCode::OK);
    for t in [&access, &access2] {
        let r = mcp(&h, "a", t).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json()["rejection"], "Revoked");
    }
    let again = client
        .exchange_refresh_token(&RefreshToken::new(
            refreshed.refresh_token().unwrap().secret().clone(),
        ))
        .request_async(&oauth2_http)
        .await;
    assert!(again.is_err(), "a revoked grant does not refresh");
    // The audit log has the story.
    let log = h
        .server
        .audit_log(AuditQuery {
            client_id: Some(client_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let kinds: Vec<&str> = log.iter().rev().map(|e| e.kind.as_str()).collect();
    for k in [
        "client_registered",
        "approval_requested",
        "grant_approved",
        "token_issued",
        "token_refreshed",
        "revoked",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
}

#[tokio::test]
async fn approval_in_the_page_needs_csrf_and_can_narrow_tools() {
    let h = Harness::start().await;
    let client_id = register(&h, "a", "Pager", CB).await;
    let (verifier, challenge) = pkce();
    let q = authorize_query(&[
        ("response_type", "code"),
        ("client_id", &client_id),
        ("redirect_uri", CB),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("state", "s1"),
        ("resource", &h.resource("a")),
        ("scope", "mcp:call offline_access"),
    ]);
    let mut browser = Browser::default();
    let page = browser.get(&format!("{}?{q}", h.authorize_url())).await;
    assert_eq!(page.status, StatusCode::OK);
    // Framing and script defences on the page.
    let csp = page.header("content-security-policy").unwrap();
    for d in [
        "default-src 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(d), "{csp}");
    }
    assert!(
        !csp.contains("script-src"),
        "no script source at all: {csp}"
    );
    assert_eq!(page.header("x-frame-options").unwrap(), "DENY");
    assert_eq!(page.header("referrer-policy").unwrap(), "no-referrer");
    let cookie = page.header("set-cookie").unwrap();
    assert!(
        cookie.contains("SameSite=Strict") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    assert!(!page.body.contains("<script"));
    let form = form_of(&page.body);
    let action = format!("{}{}", h.base, form.action);
    // CSRF: a cross-site post (no cookie, foreign Origin), a post without the cookie, and a wrong token fail.
    let mut attacker = Browser::default();
    let r = attacker
        .post(
            &action,
            &[("csrf", &form.csrf), ("decision", "approve")],
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = attacker
        .post(
            &action,
            &[("csrf", &form.csrf), ("decision", "approve")],
            None,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "the cookie is required too"
    );
    let r = browser
        .post(
            &action,
            &[("csrf", "forged"), ("decision", "approve")],
            Some(&h.base),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(h.server.approvals().len(), 1, "still pending");
    // The narrowing form.
    let narrow = browser
        .get(&format!(
            "{}/_airlock/oauth/status/{}?narrow=1",
            h.base, form.ticket
        ))
        .await;
    assert!(narrow.body.contains("name=\"tools\""));
    assert!(
        !narrow.body.contains("http-equiv=\"refresh\""),
        "the narrowing form does not reload under the user"
    );
    let r = browser
        .post(
            &action,
            &[
                ("csrf", &form.csrf),
                ("decision", "approve"),
                ("tools", "echo, add"),
            ],
            Some(&h.base),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains(&format!(
        "content=\"0;url=/_airlock/oauth/status/{}\"",
        form.ticket
    )));
    let done = browser
        .get(&format!("{}/_airlock/oauth/status/{}", h.base, form.ticket))
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    let q = query_of(&done.location());
    let a = Authorized {
        code: q["code"].clone(),
        verifier,
        location: done.location(),
    };
    let tok = exchange(&h, "a", &client_id, &a, CB, &h.resource("a")).await;
    assert_eq!(tok.status, StatusCode::OK, "{}", tok.body);
    assert_eq!(tok.json()["scope"], "mcp:call");
    // After the code is redeemed, the status URL (browser back, reload) no longer hands it out.
    let again = browser
        .get(&format!("{}/_airlock/oauth/status/{}", h.base, form.ticket))
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.header("location").is_none());
    assert!(again.body.contains("You can close this tab"));
    let access = h
        .server
        .verify("srv_a", tok.json()["access_token"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        access.tools,
        Some(vec!["add".to_owned(), "echo".to_owned()])
    );
    assert_eq!(
        access.scopes,
        Scopes {
            read: false,
            call: true
        }
    );
}

#[tokio::test]
async fn deny_redirects_access_denied_with_iss_and_state() {
    let h = Harness::start().await;
    let client_id = register(&h, "b", "Denied", CB).await;
    let a = authorize_and_approve(&h, &client_id, CB, "b", Decision::Deny).await;
    let q = query_of(&a.location);
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "st-123");
    assert_eq!(q["iss"], h.issuer("b"));
    assert!(!q.contains_key("code"));
    let log = h
        .server
        .audit_log(AuditQuery {
            kind: Some(AuditKind::GrantDenied),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].server_id.as_deref(), Some("srv_b"));
}

#[tokio::test]
async fn bad_client_or_redirect_is_an_error_page_never_a_redirect() {
    let h = Harness::start().await;
    let client_id = register(&h, "a", "App", "https://app.example/cb").await;
    let (_, challenge) = pkce();
    let base = |client: &str, redirect: &str| {
        authorize_query(&[
            ("response_type", "code"),
            ("client_id", client),
            ("redirect_uri", redirect),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("resource", &h.resource("a")),
        ])
    };
    for (client, redirect) in [
        (client_id.as_str(), "https://evil.example/cb"), // open redirect attempt
        (client_id.as_str(), "https://app.example/cb/../evil"), // mismatch
        (client_id.as_str(), "https://app.example/cb?x=1"), // mismatch
        (client_id.as_str(), "http://127.0.0.1:9/cb"), // loopback leniency only for loopback registrations
        ("dcr_unknown", "https://app.example/cb"),     // unknown client
    ] {
        let r = get(&format!("{}?{}", h.authorize_url(), base(client, redirect))).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{client} {redirect}: {}",
            r.body
        );
        assert!(r.header("location").is_none());
        assert!(!r.body.contains("evil.example/cb\""), "never linked");
    }
    assert!(h.server.approvals().is_empty());
    // DCR refuses non-https, non-loopback redirect URIs.
    let r = post_json(
        &format!("{}/a/register", h.base),
        &serde_json::json!({"redirect_uris": ["http://app.example/cb"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_redirect_uri");
}

#[tokio::test]
async fn pkce_missing_or_plain_and_resource_missing_are_refused() {
    let h = Harness::start().await;
    let client_id = register(&h, "a", "App", CB).await;
    let (verifier, challenge) = pkce();
    let res = h.resource("a");
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![],                               // PKCE missing
        vec![("code_challenge", &challenge)], // method missing = plain
        vec![
            ("code_challenge", &verifier),
            ("code_challenge_method", "plain"),
        ], // plain
    ];
    for extra in cases {
        let mut p = vec![
            ("response_type", "code"),
            ("client_id", client_id.as_str()),
            ("redirect_uri", CB),
            ("state", "x"),
            ("resource", res.as_str()),
        ];
        p.extend(extra.iter().cloned());
        let r = get(&format!("{}?{}", h.authorize_url(), authorize_query(&p))).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
        let q = query_of(&r.location());
        assert_eq!(q["error"], "invalid_request");
        assert_eq!(q["iss"], h.issuer("a"));
        assert_eq!(q["state"], "x");
    }
    // prompt=none cannot be honoured: every grant is decided by the person.
    let p = [
        ("response_type", "code"),
        ("client_id", client_id.as_str()),
        ("redirect_uri", CB),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("resource", res.as_str()),
        ("prompt", "none"),
    ];
    let r = get(&format!("{}?{}", h.authorize_url(), authorize_query(&p))).await;
    assert_eq!(query_of(&r.location())["error"], "consent_required");
    // resource missing or unknown: shown to the person, no pending approval.
    for resource in [None, Some("https://elsewhere.example/mcp")] {
        let mut p = vec![
            ("response_type", "code"),
            ("client_id", client_id.as_str()),
            ("redirect_uri", CB),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        if let Some(r) = resource {
            p.push(("resource", r));
        }
        let r = get(&format!("{}?{}", h.authorize_url(), authorize_query(&p))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.body.contains("resource"));
    }
    assert!(h.server.approvals().is_empty());
    // Token endpoint: resource missing, wrong verifier.
    let a = authorize_and_approve(&h, &client_id, CB, "a", approve_all()).await;
    let no_resource = post_form(
        &format!("{}/a/token", h.base),
        &[
            ("grant_type", "authorization_code"),
            ("code", &a.code),
            ("redirect_uri", CB),
            ("client_id", &client_id),
            ("code_verifier", &a.verifier),
        ],
    )
    .await;
    assert_eq!(no_resource.status, StatusCode::BAD_REQUEST);
    assert_eq!(no_resource.json()["error"], "invalid_request");
    let wrong = Authorized {
        code: a.code.clone(),
        verifier: pkce().0,
        location: a.location.clone(),
    };
    let r = exchange(&h, "a", &client_id, &wrong, CB, &h.resource("a")).await;
    assert_eq!(r.json()["error"], "invalid_grant");
    // The code was consumed by the failed attempt: single use whatever the outcome.
    let r = exchange(&h, "a", &client_id, &a, CB, &h.resource("a")).await;
    assert_eq!(r.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn code_replay_revokes_and_codes_expire() {
    let h = Harness::start().await;
    let client_id = register(&h, "a", "App", CB).await;
    let a = authorize_and_approve(&h, &client_id, CB, "a", approve_all()).await;
    let first = exchange(&h, "a", &client_id, &a, CB, &h.resource("a")).await;
    assert_eq!(first.status, StatusCode::OK);
    let access = first.json()["access_token"].as_str().unwrap().to_owned();
    assert!(h.server.verify("srv_a", &access).is_ok());
    let replay = exchange(&h, "a", &client_id, &a, CB, &h.resource("a")).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert_eq!(replay.json()["error"], "invalid_grant");
    assert_eq!(
        h.server.verify("srv_a", &access),
        Err(Rejection::Revoked),
        "replay revokes the grant"
    );
    // A code older than 60 s is refused.
    let b = authorize_and_approve(&h, &client_id, CB, "a", approve_all()).await;
    h.clock.advance(Duration::from_secs(61));
    let late = exchange(&h, "a", &client_id, &b, CB, &h.resource("a")).await;
    assert_eq!(late.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn a_token_for_server_a_is_refused_on_b() {
    let h = Harness::start().await;
    let client_id = register(&h, "a", "App", CB).await;
    let a = authorize_and_approve(&h, &client_id, CB, "a", approve_all()).await;
    // A code approved for A cannot be exchanged naming B, nor at B's token endpoint.
    let r = exchange(&h, "a", &client_id, &a, CB, &h.resource("b")).await;
    assert_eq!(r.json()["error"], "invalid_grant");
    let a = authorize_and_approve(&h, &client_id, CB, "a", approve_all()).await;
    let r = exchange(&h, "b", &client_id, &a, CB, &h.resource("a")).await;
    assert_eq!(r.json()["error"], "invalid_grant");
    let a = authorize_and_approve(&h, &client_id, CB, "a", approve_all()).await;
    let r = exchange(&h, "a", &client_id, &a, CB, &h.resource("a")).await;
    let t = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(mcp(&h, "a", &t).await.status, StatusCode::OK);
    let on_b = mcp(&h, "b", &t).await;
    assert_eq!(on_b.status, StatusCode::UNAUTHORIZED);
    assert_eq!(on_b.json()["rejection"], "WrongResource");
    assert_eq!(
        h.server.verify("srv_a", "alk_at_forged"),
        Err(Rejection::Invalid)
    );
}

#[tokio::test]
async fn expiry_revocation_and_refresh_reuse_outside_the_grace_window() {
    let h = Harness::start().await;
    let client_id = register(&h, "a", "App", CB).await;
    let a = authorize_and_approve(&h, &client_id, CB, "a", approve_all()).await;
    let t = exchange(&h, "a", &client_id, &a, CB, &h.resource("a"))
        .await
        .json();
    let (access, rt1) = (
        t["access_token"].as_str().unwrap().to_owned(),
        t["refresh_token"].as_str().unwrap().to_owned(),
    );
    assert_eq!(t["expires_in"], 3600);
    let refresh = |rt: String| {
        let (base, cid, res) = (h.base.clone(), client_id.clone(), h.resource("a"));
        async move {
            post_form(
                &format!("{base}/a/token"),
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &rt),
                    ("client_id", &cid),
                    ("resource", &res),
                ],
            )
            .await
        }
    };
    let r2 = refresh(rt1.clone()).await;
    assert_eq!(r2.status, StatusCode::OK, "{}", r2.body);
    let rt2 = r2.json()["refresh_token"].as_str().unwrap().to_owned();
    // A racing refresh with the old token inside the grace window still works.
    h.clock.advance(Duration::from_secs(10));
    let r3 = refresh(rt1.clone()).await;
    assert_eq!(r3.status, StatusCode::OK, "{}", r3.body);
    // Outside the window: refused, and nothing new is revoked.
    h.clock.advance(Duration::from_secs(25));
    let reuse = refresh(rt1.clone()).await;
    assert_eq!(reuse.status, StatusCode::BAD_REQUEST);
    assert_eq!(reuse.json()["error"], "invalid_grant");
    let r4 = refresh(rt2).await;
    assert_eq!(
        r4.status,
        StatusCode::OK,
        "the newest token still works: {}",
        r4.body
    );
    // Expiry of access tokens.
    assert!(h.server.verify("srv_a", &access).is_ok());
    // `access` was issued at T0, `fresh` 35 s later; both live an hour.
    h.clock.advance(Duration::from_secs(3600 - 35));
    assert_eq!(h.server.verify("srv_a", &access), Err(Rejection::Expired));
    let fresh = r4.json()["access_token"].as_str().unwrap().to_owned();
    assert!(h.server.verify("srv_a", &fresh).is_ok());
    // Revocation by grant id, from the listing.
    let clients = h.server.clients().await.unwrap();
    let grant = clients
        .iter()
        .find(|c| c.client_id == client_id)
        .unwrap()
        .grants[0]
        .id
        .clone();
    let revoked = h.server.revoke(&grant).await.unwrap();
    assert_eq!(revoked.grants, vec![grant]);
    assert_eq!(h.server.verify("srv_a", &fresh), Err(Rejection::Revoked));
    let rt4 = r4.json()["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(refresh(rt4).await.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn pending_approvals_are_capped_and_expire() {
    let h = Harness::start().await;
    let (_, challenge) = pkce();
    let mut created = 0;
    let mut refused = 0;
    for i in 0..10 {
        let client_id = register(&h, "a", &format!("Flood {i}"), CB).await;
        for _ in 0..5 {
            let q = authorize_query(&[
                ("response_type", "code"),
                ("client_id", &client_id),
                ("redirect_uri", CB),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
                ("resource", &h.resource("a")),
            ]);
            let r = get(&format!("{}?{q}", h.authorize_url())).await;
            match r.status {
                StatusCode::OK => created += 1,
                StatusCode::TOO_MANY_REQUESTS => refused += 1,
                s => panic!("unexpected {s}: {}", r.body),
            }
        }
    }
    assert_eq!(created, 32, "at most 32 pending (4 per client)");
    assert_eq!(refused, 18);
    assert_eq!(h.server.approvals().len(), 32);
    let mut events = h.server.subscribe();
    let id = h.server.approvals()[0].id.clone();
    h.clock.advance(Duration::from_secs(601));
    h.server.sweep().await;
    assert!(h.server.approvals().is_empty());
    let mut expired = 0;
    while let Ok(Event::ApprovalExpired { .. }) = events.try_recv() {
        expired += 1;
    }
    assert_eq!(expired, 32);
    assert!(matches!(
        h.server
            .decide(
                &id,
                Decision::Approve {
                    tools: None,
                    code: None
                }
            )
            .await,
        Err(Error::UnknownApproval(_))
    ));
}

#[tokio::test]
async fn a_script_bearing_client_name_is_rendered_as_text() {
    let h = Harness::start().await;
    let evil = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&";
    let client_id = register(&h, "a", evil, CB).await;
    let (_, challenge) = pkce();
    let q = authorize_query(&[
        ("response_type", "code"),
        ("client_id", &client_id),
        ("redirect_uri", CB),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("resource", &h.resource("a")),
    ]);
    // Embedding the link in another site (image, frame) raises nothing.
    for dest in ["image", "iframe", "empty"] {
        let r = request(
            Method::GET,
            &format!("{}?{q}", h.authorize_url()),
            &[("sec-fetch-dest", dest)],
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{dest}");
    }
    assert!(h.server.approvals().is_empty());
    let page = request(
        Method::GET,
        &format!("{}?{q}", h.authorize_url()),
        &[("sec-fetch-dest", "document")],
        None,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("<script"));
    assert!(!page.body.contains("<img"));
    assert!(page.body.contains(
        "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;&quot;&#39;&amp;"
    ));
}

#[tokio::test]
async fn unknown_client_gets_401_invalid_client_and_can_register_again() {
    let h = Harness::start().await;
    let r = post_form(
        &format!("{}/a/token", h.base),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "alk_rt_x"),
            ("client_id", "dcr_gone"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], "invalid_client");
    // A client revoked at the device is forgotten: its refresh gets invalid_client, and a new registration works.
    let client_id = register(&h, "a", "Claude", "https://claude.ai/api/mcp/auth_callback").await;
    let a = authorize_and_approve(
        &h,
        &client_id,
        "https://claude.ai/api/mcp/auth_callback",
        "a",
        approve_all(),
    )
    .await;
    let t = exchange(
        &h,
        "a",
        &client_id,
        &a,
        "https://claude.ai/api/mcp/auth_callback",
        &h.resource("a"),
    )
    .await
    .json();
    h.server.revoke(&client_id).await.unwrap();
    let r = post_form(
        &format!("{}/a/token", h.base),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", t["refresh_token"].as_str().unwrap()),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], "invalid_client");
    let again = register(&h, "a", "Claude", "https://claude.ai/api/mcp/auth_callback").await;
    assert_ne!(again, client_id);
}

#[tokio::test]
async fn confidential_dcr_clients_authenticate_with_their_secret() {
    let h = Harness::start().await;
    let reg = post_json(
        &format!("{}/a/register", h.base),
        &serde_json::json!({"client_name": "Conf", "redirect_uris": [CB], "token_endpoint_auth_method": "client_secret_post"}),
    )
    .await
    .json();
    let (cid, secret) = (
        reg["client_id"].as_str().unwrap().to_owned(),
        reg["client_secret"].as_str().unwrap().to_owned(),
    );
    let a = authorize_and_approve(&h, &cid, CB, "a", approve_all()).await;
    let form = |s: &str| {
        vec![
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".into(), a.code.clone()),
            ("redirect_uri".into(), CB.into()),
            ("client_id".into(), cid.clone()),
            ("client_secret".into(), s.to_owned()),
            ("code_verifier".into(), a.verifier.clone()),
            ("resource".into(), h.resource("a")),
        ]
    };
    let f = form("wrong");
    let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = post_form(&format!("{}/a/token", h.base), &f).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let f = form(&secret);
    let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = post_form(&format!("{}/a/token", h.base), &f).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the code survives a failed client authentication: {}",
        r.body
    );
}

#[tokio::test]
async fn registration_and_token_endpoints_are_rate_limited() {
    let h = Harness::start_with(
        |c| {
            c.registrations_per_minute = 3;
            c.token_requests_per_minute = 5;
        },
        None,
    )
    .await;
    for _ in 0..3 {
        register(&h, "a", "x", CB).await;
    }
    let r = post_json(
        &format!("{}/a/register", h.base),
        &serde_json::json!({"redirect_uris": [CB]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let mut statuses = vec![];
    for _ in 0..6 {
        let r = post_form(
            &format!("{}/a/token", h.base),
            &[("grant_type", "refresh_token"), ("client_id", "dcr_x")],
        )
        .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses[..5], [StatusCode::UNAUTHORIZED; 5]);
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
    h.clock.advance(Duration::from_secs(60));
    register(&h, "a", "x", CB).await;
}

#[tokio::test]
async fn claude_shapes_through_client_metadata_documents_over_https() {
    let docs = DocServer::start(&["claude.ai"]).await;
    let hosted = "https://claude.ai/oauth/mcp-oauth-client-metadata";
    let code_cli = "https://claude.ai/oauth/claude-code-client-metadata";
    docs.put(
        "/oauth/mcp-oauth-client-metadata",
        200,
        serde_json::json!({"client_id": hosted, "client_name": "Claude",
            "redirect_uris": ["https://claude.ai/api/mcp/auth_callback", "https://claude.com/api/mcp/auth_callback"],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            "token_endpoint_auth_method": "none"})
        .to_string(),
        Duration::ZERO,
    );
    docs.put(
        "/oauth/claude-code-client-metadata",
        200,
        serde_json::json!({"client_id": code_cli, "client_name": "Claude Code",
            "redirect_uris": ["http://localhost/callback", "http://127.0.0.1/callback"],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            "token_endpoint_auth_method": "none"})
        .to_string(),
        Duration::ZERO,
    );
    let public: IpAddr = "203.0.113.10".parse().unwrap();
    let (fetcher, seen) = docs.fetcher(&[("claude.ai", public)]);
    let h = Harness::start_with(|_| {}, Some(fetcher)).await;
    // Hosted connector: fixed https callback, `scope=offline_access`, `prompt=consent`.
    let (verifier, challenge) = pkce();
    let q = authorize_query(&[
        ("response_type", "code"),
        ("client_id", hosted),
        ("redirect_uri", "https://claude.ai/api/mcp/auth_callback"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("state", "cs"),
        ("scope", " offline_access"),
        ("resource", &h.resource("a")),
        ("prompt", "consent"),
    ]);
    let mut browser = Browser::default();
    let page = browser.get(&format!("{}?{q}", h.authorize_url())).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body
            .contains("claude.ai/oauth/mcp-oauth-client-metadata"),
        "the CIMD URL is shown"
    );
    assert_eq!(
        seen.lock().unwrap()[0],
        "203.0.113.10:443".parse().unwrap(),
        "dialled the checked address"
    );
    let approval = h.server.approvals().pop().unwrap();
    assert_eq!(approval.client_name, "Claude");
    assert_eq!(approval.client_kind, "cimd");
    assert_eq!(approval.scopes, Scopes::ALL);
    h.server.decide(&approval.id, approve_all()).await.unwrap();
    let form = form_of(&page.body);
    let done = browser
        .get(&format!("{}/_airlock/oauth/status/{}", h.base, form.ticket))
        .await;
    let loc = done.location();
    assert!(
        loc.as_str()
            .starts_with("https://claude.ai/api/mcp/auth_callback?code=")
    );
    let a = Authorized {
        code: query_of(&loc)["code"].clone(),
        verifier,
        location: loc,
    };
    let t = exchange(
        &h,
        "a",
        hosted,
        &a,
        "https://claude.ai/api/mcp/auth_callback",
        &h.resource("a"),
    )
    .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    // Claude Code: the document lists portless loopback URIs, the request carries an ephemeral port.
    let cb = "http://localhost:53682/callback";
    let a = authorize_and_approve(&h, code_cli, cb, "a", approve_all()).await;
    assert!(
        a.location
            .as_str()
            .starts_with("http://localhost:53682/callback?code=")
    );
    let t = exchange(&h, "a", code_cli, &a, cb, &h.resource("a")).await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    // The documents were cached: one fetch each.
    let hits = docs.hits.load(std::sync::atomic::Ordering::SeqCst);
    let _ = authorize_and_approve(
        &h,
        code_cli,
        "http://127.0.0.1:1234/callback",
        "a",
        Decision::Deny,
    )
    .await;
    assert_eq!(docs.hits.load(std::sync::atomic::Ordering::SeqCst), hits);
    assert_eq!(hits, 2);
    // A loopback redirect on another path or host is refused.
    let (_, challenge) = pkce();
    let q = authorize_query(&[
        ("response_type", "code"),
        ("client_id", code_cli),
        ("redirect_uri", "http://localhost:53682/evil"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("resource", &h.resource("a")),
    ]);
    let r = get(&format!("{}?{q}", h.authorize_url())).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.header("location").is_none());
}

#[tokio::test]
async fn client_metadata_fetches_are_guarded() {
    let docs = DocServer::start(&[
        "good.example",
        "loop.example",
        "priv.example",
        "meta.example",
        "big.example",
        "slow.example",
        "liar.example",
        "moved.example",
    ])
    .await;
    let public: IpAddr = "203.0.113.20".parse().unwrap();
    let doc = |id: &str| serde_json::json!({"client_id": id, "redirect_uris": [CB]}).to_string();
    docs.put("/big", 200, format!("{{\"client_id\":\"https://big.example/big\",\"redirect_uris\":[\"{CB}\"],\"pad\":\"{}\"}}", "x".repeat(70 * 1024)), Duration::ZERO);
    docs.put(
        "/slow",
        200,
        doc("https://slow.example/slow"),
        Duration::from_secs(20),
    );
    docs.put(
        "/liar",
        200,
        doc("https://good.example/app"),
        Duration::ZERO,
    );
    docs.put("/moved", 302, String::new(), Duration::ZERO);
    docs.put("/app", 200, doc("https://good.example/app"), Duration::ZERO);
    let (fetcher, seen) = docs.fetcher(&[
        ("good.example", public),
        ("loop.example", "127.0.0.1".parse().unwrap()),
        ("priv.example", "10.0.0.7".parse().unwrap()),
        ("meta.example", "169.254.169.254".parse().unwrap()),
        ("big.example", public),
        ("slow.example", public),
        ("liar.example", public),
        ("moved.example", public),
    ]);
    let fetcher = fetcher.with_limits(64 * 1024, Duration::from_secs(2));
    let h = Harness::start_with(|_| {}, Some(fetcher)).await;
    let (_, challenge) = pkce();
    let try_client = |id: &str| {
        let q = authorize_query(&[
            ("response_type", "code"),
            ("client_id", id),
            ("redirect_uri", CB),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("resource", &h.resource("a")),
        ]);
        let url = format!("{}?{q}", h.authorize_url());
        async move { get(&url).await }
    };
    for (id, why) in [
        ("https://loop.example/app", "loopback"),
        ("https://priv.example/app", "private address"),
        ("https://meta.example/app", "link-local"),
    ] {
        let r = try_client(id).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{id}");
        assert!(r.body.contains(why), "{id}: {}", r.body);
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "refused before dialling: {:?}",
        seen.lock().unwrap()
    );
    for (id, why) in [
        ("https://big.example/big", "at most 65536"),
        ("https://slow.example/slow", "took longer than"),
        ("https://liar.example/liar", "must equal its own URL"),
        ("https://moved.example/moved", "redirects are not followed"),
    ] {
        let started = std::time::Instant::now();
        let r = try_client(id).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{id}");
        assert!(r.body.contains(why), "{id}: {}", r.body);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    let ok = try_client("https://good.example/app").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
}

#[tokio::test]
async fn minted_tokens_are_listed_and_revocable_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let h = Harness::start_in(dir, |_| {}, None).await;
    let minted = h
        .server
        .mint_token(
            "srv_b",
            Scopes {
                read: true,
                call: false,
            },
            Some(vec!["echo".into()]),
            Duration::from_secs(7 * 86400),
            "messages api",
        )
        .await
        .unwrap();
    assert!(
        !format!("{minted:?}").contains(&minted.token),
        "Debug never shows the token"
    );
    let access = h.server.verify("srv_b", &minted.token).unwrap();
    assert_eq!(
        access.scopes,
        Scopes {
            read: true,
            call: false
        }
    );
    assert_eq!(access.client_name, "messages api");
    assert_eq!(
        h.server.verify("srv_a", &minted.token),
        Err(Rejection::WrongResource)
    );
    h.server.record_mcp_call(McpCall {
        server_id: "srv_b".into(),
        grant_id: Some(minted.grant_id.clone()),
        client_id: Some(minted.client_id.clone()),
        method: "tools/call".into(),
        tool: Some("echo".into()),
        status: 200,
        bytes_in: 120,
        bytes_out: 340,
        duration: Duration::from_millis(12),
        ingress: Ingress::Relay,
    });
    let calls = h
        .server
        .audit_log(AuditQuery {
            server_id: Some("srv_b".into()),
            kind: Some(AuditKind::McpCall),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].tool.as_deref(), Some("echo"));
    assert_eq!(calls[0].bytes_out, Some(340));
    assert_eq!(calls[0].duration_ms, Some(12));
    assert_eq!(calls[0].ingress.as_deref(), Some("relay"));
    assert!(
        h.server
            .audit_log(AuditQuery {
                server_id: Some("srv_a".into()),
                kind: Some(AuditKind::McpCall),
                ..Default::default()
            })
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        h.server
            .audit_log(AuditQuery {
                since_ms: Some(T0 + 1),
                ..Default::default()
            })
            .await
            .unwrap()
            .is_empty()
    );
    // The database (and its WAL) is private to the user.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["oauth.sqlite", "oauth.sqlite-wal"] {
            let mode = std::fs::metadata(path.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
    // The database stores only hashes.
    let raw = std::fs::read(path.join("oauth.sqlite")).unwrap();
    let wal = std::fs::read(path.join("oauth.sqlite-wal")).unwrap_or_default();
    let needle = minted.token.as_bytes();
    assert!(
        !raw.windows(needle.len()).any(|w| w == needle)
            && !wal.windows(needle.len()).any(|w| w == needle)
    );
    // A second server on the same database (a restart) knows the token.
    drop(h.server.clone());
    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(
        path.join("oauth.sqlite"),
        "http://127.0.0.1:1/_airlock/oauth/authorize".into(),
    );
    cfg.access_token_ttl = Duration::from_secs(60);
    let mut opts = Options::new(cfg, std::sync::Arc::new(TestResources { port: 1 }));
    opts.clock = h.clock.clone();
    let reopened = AuthServer::open(opts).await.unwrap();
    assert!(reopened.verify("srv_b", &minted.token).is_ok());
    drop(dir2);
    let clients = h.server.clients().await.unwrap();
    let c = clients
        .iter()
        .find(|c| c.client_id == minted.client_id)
        .unwrap();
    assert_eq!(c.kind, "minted");
    assert_eq!(c.grants[0].tokens[0].id, minted.token_id);
    h.server.revoke(&minted.token_id).await.unwrap();
    assert_eq!(
        h.server.verify("srv_b", &minted.token),
        Err(Rejection::Revoked)
    );
    assert!(matches!(
        h.server.revoke("tk_nothing").await,
        Err(Error::UnknownId(_))
    ));
}

#[tokio::test]
async fn control_routes_list_decide_mint_revoke_and_query_the_audit_log() {
    let h = Harness::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let app: axum::Router = control_router(h.server.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client_id = register(&h, "a", "Controlled", CB).await;
    let (verifier, challenge) = pkce();
    let q = authorize_query(&[
        ("response_type", "code"),
        ("client_id", &client_id),
        ("redirect_uri", CB),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("resource", &h.resource("a")),
    ]);
    let mut browser = Browser::default();
    let page = browser.get(&format!("{}?{q}", h.authorize_url())).await;
    let list = get(&format!("{api}/v1/approvals")).await.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["client_name"], "Controlled");
    assert_eq!(list[0]["redirect_host"], "127.0.0.1:40111");
    assert_eq!(list[0]["server_id"], "srv_a");
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let r = post_json(
        &format!("{api}/v1/approvals/{id}/approve"),
        &serde_json::json!({"tools": ["echo"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = request(
        Method::POST,
        &format!("{api}/v1/approvals/{id}/deny"),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "decided once");
    let r = request(
        Method::POST,
        &format!("{api}/v1/approvals/nope/deny"),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let done = browser
        .get(&format!(
            "{}/_airlock/oauth/status/{}",
            h.base,
            form_of(&page.body).ticket
        ))
        .await;
    let a = Authorized {
        code: query_of(&done.location())["code"].clone(),
        verifier,
        location: done.location(),
    };
    let t = exchange(&h, "a", &client_id, &a, CB, &h.resource("a"))
        .await
        .json();
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(
        h.server.verify("srv_a", access).unwrap().tools,
        Some(vec!["echo".to_owned()])
    );

    let minted = post_json(&format!("{api}/v1/tokens"), &serde_json::json!({"server_id": "srv_b", "scope": "mcp:read", "ttl_secs": 3600, "label": "ci"})).await;
    assert_eq!(minted.status, StatusCode::OK, "{}", minted.body);
    let minted = minted.json();
    let token = minted["token"].as_str().unwrap();
    assert!(h.server.verify("srv_b", token).is_ok());
    let r = post_json(
        &format!("{api}/v1/tokens"),
        &serde_json::json!({"server_id": "srv_zzz"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = post_json(
        &format!("{api}/v1/tokens"),
        &serde_json::json!({"server_id": "srv_b", "scope": "admin"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let clients = get(&format!("{api}/v1/clients")).await.json();
    let ids: Vec<&str> = clients
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&client_id.as_str()) && ids.contains(&minted["client_id"].as_str().unwrap())
    );
    assert!(
        !get(&format!("{api}/v1/clients")).await.body.contains(token),
        "listing never shows tokens"
    );

    let r = post_json(
        &format!("{api}/v1/revoke"),
        &serde_json::json!({"id": client_id}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["grants"].as_array().unwrap().len(), 1);
    assert_eq!(h.server.verify("srv_a", access), Err(Rejection::Revoked));
    let r = post_json(
        &format!("{api}/v1/revoke"),
        &serde_json::json!({"id": "gr_unknown"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let log = get(&format!("{api}/v1/audit?kind=token_minted"))
        .await
        .json();
    assert_eq!(log.as_array().unwrap().len(), 1);
    assert_eq!(log[0]["server_id"], "srv_b");
    let log = get(&format!("{api}/v1/audit?server=srv_a&limit=2"))
        .await
        .json();
    assert_eq!(log.as_array().unwrap().len(), 2);
    assert_eq!(log[0]["kind"], "revoked", "newest first");
    assert_eq!(
        get(&format!("{api}/v1/audit?kind=bogus")).await.status,
        StatusCode::BAD_REQUEST
    );
}
