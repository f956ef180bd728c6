//! The approval pages (`/_airlock/oauth/…`) on the loopback gateway, and with [`Config::remote_approval`] on a relay
//! hostname. No JavaScript; every client-supplied string is escaped text; strict CSP; CSRF token in the form and in a
//! `SameSite=Strict` cookie.
//!
//! The remote page (relay hostname: a browser elsewhere) shows a random confirmation code, `XXXX-XXXX`, and has no
//! approve button: the request is approved only in Airlock on the device, by entering that code
//! ([`AuthServer::decide`]). It can deny, and follows the decision like the loopback page.
//!
//! - `GET  /_airlock/oauth/authorize?…`     validates the request, raises a pending approval, shows it.
//! - `GET  /_airlock/oauth/status/<ticket>` while pending: the same page, refreshing itself every few seconds (so a
//!   decision taken in the app or CLI is picked up); once decided: `303` to the client's redirect URI with
//!   `code`, `state`, `iss` (or `error=access_denied`). `?narrow=1`: the form to approve a subset of tools (no
//!   refresh).
//! - `POST /_airlock/oauth/decide/<ticket>` the form's answer (CSRF-checked); continues on the status URL.

use axum::body::Body;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use url::Url;

use crate::audit::{AuditEntry, AuditKind};
use crate::cimd;
use crate::clients::{self, ClientKind};
use crate::endpoints::{parse_form, read_body};
use crate::html::esc;
use crate::server::{AuthServer, Outcome, Pending};
use crate::tokens;
use crate::types::*;

const PREFIX: &str = "/_airlock/oauth";
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'none'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";
const REFRESH_SECS: u32 = 3;

const CSS: &str = "body{font:15px/1.45 system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em;color:#1b1b1b}
h1{font-size:1.3em}dl{display:grid;grid-template-columns:max-content 1fr;gap:.3em 1em}dt{color:#555}
dd{margin:0;word-break:break-all}.warn{background:#fff4d6;border:1px solid #e3c25b;padding:.6em;border-radius:4px}
.code{font:bold 1.3em monospace;letter-spacing:.1em}button{font-size:1em;padding:.5em 1.2em;margin-right:.6em}
.approve{background:#1f6f3f;color:#fff;border:0;border-radius:4px}.deny{background:#fff;border:1px solid #999;border-radius:4px}
input[type=text]{width:100%;font-size:1em;padding:.3em}.confirm{font-size:1.25em}
.confirm .code{display:inline-block;font-size:1.5em;padding:.1em .4em;border:2px solid #1b1b1b;border-radius:4px}";

fn page(status: StatusCode, title: &str, body: &str, refresh: Option<String>) -> Response<Body> {
    let meta = refresh
        .map(|r| format!("<meta http-equiv=\"refresh\" content=\"{}\">", esc(&r)))
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{meta}<title>{}</title>\
         <link rel=\"stylesheet\" href=\"{PREFIX}/style.css\"></head><body>{body}</body></html>",
        esc(title)
    );
    let mut r = Response::new(Body::from(html));
    *r.status_mut() = status;
    harden(&mut r);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn harden(r: &mut Response<Body>) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn error_page(status: StatusCode, msg: &str) -> Response<Body> {
    page(
        status,
        "Airlock: authorization refused",
        &format!(
            "<h1>Airlock refused this authorization request</h1><p>{}</p>\
             <p>Nothing was sent back to the application. You can close this tab.</p>",
            esc(msg)
        ),
        None,
    )
}

fn redirect(location: &str) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    harden(&mut r);
    match HeaderValue::from_str(location) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => error_page(StatusCode::BAD_REQUEST, "the redirect URI cannot be used"),
    }
}

/// `redirect_uri` with the response parameters appended (its own query kept).
fn client_redirect(redirect_uri: &str, params: &[(&str, &str)]) -> Option<String> {
    let mut url = Url::parse(redirect_uri).ok()?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    Some(url.to_string())
}

fn cookie_name(ticket: &str) -> String {
    format!("airlock_csrf_{}", &ticket[..ticket.len().min(16)])
}

fn cookie_value(parts: &http::request::Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

impl AuthServer {
    pub(crate) async fn pages(&self, ctx: RequestContext, req: Request<Body>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return error_page(StatusCode::NOT_FOUND, "no such page");
        };
        match (req.method().clone(), rest) {
            (Method::GET, "/style.css") => {
                let mut r = Response::new(Body::from(CSS));
                harden(&mut r);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/css; charset=utf-8"),
                );
                r
            }
            (Method::GET, "/authorize") => self.authorize(ctx, req).await,
            (Method::GET, r) if r.starts_with("/status/") => {
                let narrow = req.uri().query().is_some_and(|q| q.contains("narrow=1"));
                self.status_page(&r["/status/".len()..], narrow)
            }
            (Method::POST, r) if r.starts_with("/decide/") => {
                let ticket = r["/decide/".len()..].to_owned();
                self.decide_post(ctx, &ticket, req).await
            }
            _ => error_page(StatusCode::NOT_FOUND, "no such page"),
        }
    }

    async fn authorize(&self, ctx: RequestContext, req: Request<Body>) -> Response<Body> {
        let now = self.now();
        // Only a top-level navigation raises an approval: a cross-site <img>/<iframe>/fetch cannot spam the person.
        if let Some(dest) = req.headers().get("sec-fetch-dest")
            && dest.as_bytes() != b"document"
        {
            return error_page(
                StatusCode::FORBIDDEN,
                "open the authorization link in the browser's address bar",
            );
        }
        let q = match parse_form(req.uri().query().unwrap_or("").as_bytes()) {
            Ok(q) => q,
            Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
        };
        let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
        // 1. Client and redirect URI: any problem here is shown, never redirected (no open redirect).
        let Some(client_id) = get("client_id") else {
            return error_page(StatusCode::BAD_REQUEST, "client_id is missing");
        };
        let client = if client_id.starts_with("https://") {
            if let Err(e) = cimd::cimd_url(client_id) {
                return error_page(StatusCode::BAD_REQUEST, &e);
            }
            match self.cimd_client(client_id).await {
                Ok(c) => c,
                Err(e) => {
                    return error_page(
                        StatusCode::BAD_REQUEST,
                        &format!("could not use the client metadata document: {e}"),
                    );
                }
            }
        } else {
            match self.client(client_id).await {
                Ok(Some(c)) if c.kind != ClientKind::Minted => c,
                Ok(_) => {
                    return error_page(
                        StatusCode::BAD_REQUEST,
                        "unknown client_id: the application must register again",
                    );
                }
                Err(e) => {
                    tracing::warn!("client lookup: {e}");
                    return error_page(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
                }
            }
        };
        let Some(redirect_uri) = get("redirect_uri") else {
            return error_page(StatusCode::BAD_REQUEST, "redirect_uri is missing");
        };
        if !clients::redirect_matches(&client.redirect_uris, redirect_uri) {
            return error_page(
                StatusCode::BAD_REQUEST,
                &format!(
                    "redirect_uri {redirect_uri} is not registered for this client (registered: {})",
                    client.redirect_uris.join(", ")
                ),
            );
        }
        // 2. Resource: without it there is no server and no issuer to answer for; shown, not redirected.
        //    On a server's own hostname (the remote page) it must name that server.
        let Some(resource) = get("resource") else {
            return error_page(
                StatusCode::BAD_REQUEST,
                "resource is missing: the application must name the MCP server it wants (RFC 8707)",
            );
        };
        let Some(target) = self.inner.resources.resolve(resource) else {
            return error_page(
                StatusCode::BAD_REQUEST,
                &format!("resource {resource} is not a server exposed by this Airlock"),
            );
        };
        if let Some(host_server) = &ctx.server_id
            && *host_server != target.server_id
        {
            return error_page(
                StatusCode::BAD_REQUEST,
                &format!("resource {resource} names another server than this hostname's"),
            );
        }
        let remote = ctx.ingress != Ingress::Loopback;
        let state = get("state").map(str::to_owned);
        let fail = |error: &str, desc: &str| {
            let mut p = vec![("error", error), ("error_description", desc)];
            if let Some(s) = &state {
                p.push(("state", s));
            }
            p.push(("iss", target.issuer.as_str()));
            match client_redirect(redirect_uri, &p) {
                Some(l) => redirect(&l),
                None => error_page(StatusCode::BAD_REQUEST, desc),
            }
        };
        // 3. The rest is answered to the client with `iss`.
        if get("response_type") != Some("code") {
            return fail("unsupported_response_type", "response_type must be code");
        }
        let Some(challenge) = get("code_challenge") else {
            return fail(
                "invalid_request",
                "PKCE is required: send code_challenge with code_challenge_method=S256",
            );
        };
        if get("code_challenge_method") != Some("S256") {
            return fail(
                "invalid_request",
                "code_challenge_method must be S256 (plain is not accepted)",
            );
        }
        if challenge.len() != 43
            || !challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return fail(
                "invalid_request",
                "code_challenge must be a base64url SHA-256 (43 characters)",
            );
        }
        if get("prompt").is_some_and(|p| p.split(' ').any(|p| p == "none")) {
            return fail(
                "consent_required",
                "every grant is approved by the person at the device",
            );
        }
        if get("request").is_some() || get("request_uri").is_some() {
            return fail("request_not_supported", "request objects are not supported");
        }
        let scopes = Scopes::parse_requested(get("scope"));
        // 4. Caps and rates.
        {
            let st = self.state();
            let live: Vec<&Pending> = st
                .pending
                .values()
                .filter(|p| p.outcome.is_none() && p.approval.expires_ms > now)
                .collect();
            if live.len() >= self.inner.cfg.max_pending {
                return error_page(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many authorization requests are waiting; decide or deny them in Airlock first",
                );
            }
            let same_client = live
                .iter()
                .filter(|p| p.approval.client_id == client.client_id)
                .count();
            if same_client >= self.inner.cfg.max_pending_per_client {
                return error_page(
                    StatusCode::TOO_MANY_REQUESTS,
                    "this application already has several authorization requests waiting; decide those first",
                );
            }
        }
        let rate_key = format!(
            "{}|{}",
            ctx.peer.map(|p| p.ip().to_string()).unwrap_or_default(),
            client.client_id
        );
        if !self.inner.approval_limit.allow(&rate_key, now) {
            return error_page(
                StatusCode::TOO_MANY_REQUESTS,
                "too many authorization requests in the last minute; wait a minute",
            );
        }
        let server_name = self
            .inner
            .resources
            .server_name(&target.server_id)
            .unwrap_or_else(|| target.server_id.clone());
        let approval = Approval {
            id: tokens::id("", 4),
            client_id: client.client_id.clone(),
            client_name: client.name.clone(),
            client_kind: client.kind.as_str().to_owned(),
            cimd_url: (client.kind == ClientKind::Cimd).then(|| client.client_id.clone()),
            redirect_uri: redirect_uri.to_owned(),
            redirect_host: clients::redirect_host(redirect_uri),
            server_id: target.server_id.clone(),
            server_name,
            resource: resource.to_owned(),
            scopes,
            tools: None,
            created_ms: now,
            expires_ms: now + duration_ms(self.inner.cfg.approval_ttl),
            state: "pending".into(),
            remote,
        };
        let ticket = tokens::secret("");
        let csrf = tokens::secret("");
        let pending = Pending {
            approval: approval.clone(),
            state_param: state.clone(),
            code_challenge: challenge.to_owned(),
            issuer: target.issuer.clone(),
            ticket: ticket.clone(),
            csrf: csrf.clone(),
            outcome: None,
            confirm: remote.then(tokens::confirmation_code),
            wrong_codes: 0,
            denied_why: None,
        };
        let html = {
            let mut st = self.state();
            if st.pending.contains_key(&approval.id) {
                // 32 random bits collided with a live id: refuse rather than overwrite.
                return error_page(StatusCode::SERVICE_UNAVAILABLE, "please try again");
            }
            let html = render_pending(&pending, false);
            st.pending.insert(approval.id.clone(), pending);
            html
        };
        self.audit(
            AuditEntry::new(now, AuditKind::ApprovalRequested)
                .server(&approval.server_id)
                .client(&approval.client_id)
                .detail(format!(
                    "approval {} redirect {} scopes {}{}",
                    approval.id,
                    approval.redirect_uri,
                    approval.scopes,
                    if remote {
                        " (remote page, code required)"
                    } else {
                        ""
                    }
                )),
        );
        self.emit(Event::ApprovalPending {
            approval: Box::new(approval.clone()),
        });
        let mut r = html;
        let secure = if ctx.origin.starts_with("https://") {
            "; Secure"
        } else {
            ""
        };
        let cookie = format!(
            "{}={csrf}; Path={PREFIX}; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            cookie_name(&ticket),
            self.inner.cfg.approval_ttl.as_secs()
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        r
    }

    fn find_ticket<'a>(
        st: &'a std::sync::MutexGuard<'_, crate::server::State>,
        ticket: &str,
    ) -> Option<&'a Pending> {
        st.pending
            .values()
            .find(|p| tokens::ct_eq(p.ticket.as_bytes(), ticket.as_bytes()))
    }

    fn status_page(&self, ticket: &str, narrow: bool) -> Response<Body> {
        let now = self.now();
        let st = self.state();
        let Some(p) = Self::find_ticket(&st, ticket) else {
            return error_page(
                StatusCode::NOT_FOUND,
                "this authorization request is unknown or expired; start again from the application",
            );
        };
        let mut params: Vec<(&str, &str)> = Vec::new();
        let expired = p.outcome.is_none() && p.approval.expires_ms <= now;
        match (&p.outcome, expired) {
            (None, false) => return render_pending(p, narrow),
            (Some(Outcome::Approved { code }), _) => {
                // Once redeemed (or expired) the code is not handed out again: a second delivery would look like a
                // replay and end the grant.
                if !st.codes.contains_key(&tokens::hash(code)) {
                    return page(
                        StatusCode::OK,
                        "Airlock: done",
                        "<h1>Access approved</h1><p>The application has what it needs. You can close this tab.</p>",
                        None,
                    );
                }
                params.push(("code", code))
            }
            (Some(Outcome::Denied), _) | (None, true) => {
                params.push(("error", "access_denied"));
                params.push((
                    "error_description",
                    if expired || p.approval.state == "expired" {
                        "the request expired before anyone approved it"
                    } else {
                        p.denied_why.unwrap_or("denied at the device")
                    },
                ));
            }
            (Some(Outcome::Failed), _) => {
                params.push(("error", "server_error"));
                params.push(("error_description", "the grant could not be stored"));
            }
        }
        if let Some(s) = &p.state_param {
            params.push(("state", s));
        }
        params.push(("iss", &p.issuer));
        match client_redirect(&p.approval.redirect_uri, &params) {
            Some(l) => redirect(&l),
            None => error_page(StatusCode::BAD_REQUEST, "the redirect URI cannot be used"),
        }
    }

    async fn decide_post(
        &self,
        ctx: RequestContext,
        ticket: &str,
        req: Request<Body>,
    ) -> Response<Body> {
        let (parts, body) = match read_body(req).await {
            Ok(x) => x,
            Err(_) => return error_page(StatusCode::PAYLOAD_TOO_LARGE, "request too large"),
        };
        // Cross-site form posts are refused by origin (browsers send Origin on POST) and by the CSRF token, which
        // must be in both the form and the SameSite=Strict cookie.
        if let Some(origin) = parts.headers.get(header::ORIGIN)
            && origin.as_bytes() != ctx.origin.as_bytes()
        {
            return error_page(StatusCode::FORBIDDEN, "cross-site request refused");
        }
        if let Some(site) = parts.headers.get("sec-fetch-site")
            && site.as_bytes() != b"same-origin"
        {
            return error_page(StatusCode::FORBIDDEN, "cross-site request refused");
        }
        let form = match parse_form(&body) {
            Ok(f) => f,
            Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
        };
        let (id, csrf, remote) = {
            let st = self.state();
            match Self::find_ticket(&st, ticket) {
                Some(p) => (p.approval.id.clone(), p.csrf.clone(), p.confirm.is_some()),
                None => {
                    return error_page(
                        StatusCode::NOT_FOUND,
                        "this authorization request is unknown or expired",
                    );
                }
            }
        };
        let form_csrf = form.get("csrf").map(String::as_str).unwrap_or("");
        let cookie_csrf = cookie_value(&parts, &cookie_name(ticket)).unwrap_or_default();
        if !tokens::ct_eq(form_csrf.as_bytes(), csrf.as_bytes())
            || !tokens::ct_eq(cookie_csrf.as_bytes(), csrf.as_bytes())
        {
            return error_page(
                StatusCode::FORBIDDEN,
                "the form's security token does not match; reload the approval page and try again",
            );
        }
        let decision = match form.get("decision").map(String::as_str) {
            Some("approve") if remote => {
                // A browser elsewhere must not be able to approve: only the person at the device can, with the code.
                return error_page(
                    StatusCode::FORBIDDEN,
                    "this request can only be approved in Airlock on the computer it runs on, by entering the code \
                     this page shows",
                );
            }
            Some("approve") => {
                let tools: Vec<String> = form
                    .get("tools")
                    .map(|t| {
                        t.split([',', ' ', '\n'])
                            .map(str::trim)
                            .filter(|t| !t.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                Decision::Approve {
                    tools: (!tools.is_empty()).then_some(tools),
                    code: None,
                }
            }
            Some("deny") => Decision::Deny,
            _ => return error_page(StatusCode::BAD_REQUEST, "choose approve or deny"),
        };
        match self.decide(&id, decision).await {
            Ok(()) | Err(Error::AlreadyDecided(_)) => {}
            Err(Error::UnknownApproval(_)) => {
                return error_page(StatusCode::GONE, "this authorization request expired");
            }
            Err(e) => {
                tracing::warn!("deciding approval {id}: {e}");
                return error_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the decision could not be stored",
                );
            }
        }
        // A page (not a redirect) so the continuation is a fresh navigation, not part of the form submission.
        page(
            StatusCode::OK,
            "Airlock: decision recorded",
            "<h1>Decision recorded</h1><p>Returning to the application…</p>",
            Some(format!("0;url={PREFIX}/status/{ticket}")),
        )
    }
}

fn render_pending(p: &Pending, narrow: bool) -> Response<Body> {
    if let Some(code) = &p.confirm {
        return render_remote(p, code);
    }
    let a = &p.approval;
    let status_url = format!("{PREFIX}/status/{}", p.ticket);
    let mut b = String::new();
    b.push_str("<h1>An application asks for access to an MCP server</h1>");
    b.push_str("<p class=\"warn\">Airlock never approves on its own. Approve only if <strong>you</strong> just \
                started connecting this application, and the redirect host below is the one you expect. The \
                application's name is self-declared.</p>");
    details(&mut b, a);
    let action = format!("{PREFIX}/decide/{}", p.ticket);
    let csrf = esc(&p.csrf);
    if narrow {
        b.push_str(&format!(
            "<form method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <p><label>Allow only these tools (comma-separated names):<br>\
             <input type=\"text\" name=\"tools\" required></label></p>\
             <button class=\"approve\" name=\"decision\" value=\"approve\">Approve these tools</button>\
             <button class=\"deny\" name=\"decision\" value=\"deny\">Deny</button></form>\
             <p><a href=\"{}\">Back</a></p>",
            esc(&action),
            esc(&status_url)
        ));
    } else {
        b.push_str(&format!(
            "<form method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button class=\"approve\" name=\"decision\" value=\"approve\">Approve</button>\
             <button class=\"deny\" name=\"decision\" value=\"deny\">Deny</button></form>\
             <p><a href=\"{}?narrow=1\">Approve only some tools…</a></p>\
             <p>You can also decide in the Airlock app or with <code>airlock approve {}</code> / \
             <code>airlock deny {}</code>; this page follows on its own.</p>",
            esc(&action),
            esc(&status_url),
            esc(&a.id),
            esc(&a.id)
        ));
    }
    page(
        StatusCode::OK,
        "Airlock: approve access?",
        &b,
        (!narrow).then(|| format!("{REFRESH_SECS};url={status_url}")),
    )
}

/// The request, as a definition list (text only).
fn details(b: &mut String, a: &Approval) {
    b.push_str("<dl>");
    let row = |b: &mut String, k: &str, v: &str| {
        b.push_str(&format!("<dt>{}</dt><dd>{}</dd>", esc(k), esc(v)));
    };
    row(b, "Request", &a.id);
    row(b, "Application", &a.client_name);
    row(b, "Redirect host", &a.redirect_host);
    row(b, "Redirect URI", &a.redirect_uri);
    match &a.cimd_url {
        Some(u) => row(b, "Client metadata", u),
        None => row(b, "Client", &format!("{} ({})", a.client_id, a.client_kind)),
    }
    row(b, "Server", &format!("{} ({})", a.server_name, a.server_id));
    row(b, "Resource", &a.resource);
    let scopes = match (a.scopes.read, a.scopes.call) {
        (true, true) => "read (list, get, read) and call tools",
        (true, false) => "read only (list, get, read)",
        (false, true) => "call tools",
        (false, false) => "none",
    };
    row(b, "Access", scopes);
    row(
        b,
        "Tools",
        &a.tools.as_ref().map_or("all".to_owned(), |t| t.join(", ")),
    );
    b.push_str("</dl>");
}

/// The remote page: the code to confirm at the device, the request, a Deny button, no way to approve.
fn render_remote(p: &Pending, code: &str) -> Response<Body> {
    let a = &p.approval;
    let status_url = format!("{PREFIX}/status/{}", p.ticket);
    let shown = tokens::format_code(code);
    let mut b = String::new();
    b.push_str("<h1>Confirm this request in Airlock on your computer</h1>");
    b.push_str(&format!(
        "<p class=\"confirm\">To allow this, confirm code <span class=\"code\" id=\"confirmation-code\">{}</span> \
         in Airlock on your computer.</p><p>There: the Approvals view, or in a terminal \
         <code>airlock approve {} --code {}</code>.</p>",
        esc(&shown),
        esc(&a.id),
        esc(&shown)
    ));
    b.push_str("<p class=\"warn\">This page cannot approve anything: a request opened in a browser away from the \
                computer is approved only there, with the code above. If you did not just start connecting this \
                application, deny it. The application's name is self-declared.</p>");
    details(&mut b, a);
    b.push_str(&format!(
        "<form method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button class=\"deny\" name=\"decision\" value=\"deny\">Deny</button></form>\
         <p>This page follows on its own once the request is decided.</p>",
        esc(&format!("{PREFIX}/decide/{}", p.ticket)),
        esc(&p.csrf)
    ));
    page(
        StatusCode::OK,
        "Airlock: confirm the code on your computer",
        &b,
        Some(format!("{REFRESH_SECS};url={status_url}")),
    )
}
