//! HTTP endpoints on every exposed hostname: metadata, token, registration, revocation.

use std::collections::HashMap;

use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::audit::{AuditEntry, AuditKind};
use crate::clients::{self, ClientKind, ClientRecord};
use crate::server::{AuthServer, Issued, RefreshError};
use crate::tokens;
use crate::types::*;

/// Request bodies larger than this are refused.
pub(crate) const MAX_BODY: usize = 64 * 1024;

pub(crate) fn no_store(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn cors(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, mcp-protocol-version"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    r
}

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    no_store(r)
}

pub(crate) fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response<Body> {
    let mut r = json_response(
        status,
        &json!({"error": code, "error_description": description}),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"airlock\""),
        );
    }
    r
}

fn too_many() -> Response<Body> {
    let mut r = oauth_error(
        StatusCode::TOO_MANY_REQUESTS,
        "temporarily_unavailable",
        "too many requests; try again in a minute",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    r
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

pub(crate) async fn read_body(
    req: Request<Body>,
) -> Result<(http::request::Parts, Vec<u8>), Response<Body>> {
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => Ok((parts, b.to_vec())),
        Err(_) => Err(oauth_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            "request body too large",
        )),
    }
}

/// Parses `application/x-www-form-urlencoded`; a parameter given twice is an error (RFC 6749 §3.1).
pub(crate) fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("parameter {k:?} given more than once"));
        }
    }
    Ok(out)
}

fn peer_key(ctx: &RequestContext) -> String {
    ctx.peer
        .map(|p| p.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

impl AuthServer {
    /// Answers one authorization-server request (see [`Endpoint`]).
    pub fn handle(
        &self,
        ctx: RequestContext,
        req: Request<Body>,
    ) -> futures::future::BoxFuture<'static, Response<Body>> {
        let this = self.clone();
        Box::pin(async move {
            match ctx.endpoint {
                Endpoint::Pages => {
                    if !this.pages_served_on(ctx.ingress) {
                        return empty(StatusCode::NOT_FOUND);
                    }
                    this.pages(ctx, req).await
                }
                _ if req.method() == Method::OPTIONS => cors(empty(StatusCode::NO_CONTENT)),
                Endpoint::AuthorizationServerMetadata | Endpoint::OpenIdConfiguration => {
                    if req.method() != Method::GET && req.method() != Method::HEAD {
                        return cors(empty(StatusCode::METHOD_NOT_ALLOWED));
                    }
                    cors(json_response(
                        StatusCode::OK,
                        &this.metadata(&ctx.issuer, ctx.ingress),
                    ))
                }
                Endpoint::Token => cors(this.token_endpoint(ctx, req).await),
                Endpoint::Register => cors(this.register_endpoint(ctx, req).await),
                Endpoint::Revoke => cors(this.revoke_endpoint(req).await),
            }
        })
    }

    /// Whether the approval pages answer on `ingress`: always on loopback; on a relay hostname with
    /// [`Config::remote_approval`]; never on the Anthropic tunnel (no browser reaches its hostnames).
    pub(crate) fn pages_served_on(&self, ingress: Ingress) -> bool {
        match ingress {
            Ingress::Loopback => true,
            Ingress::Relay => self.inner.cfg.remote_approval,
            Ingress::AnthropicTunnel => false,
        }
    }

    /// Where a browser approves requests for `issuer` (seen on `ingress`): the remote page on that same hostname
    /// when it serves one, else the loopback page ([`Config::authorization_endpoint`]).
    pub fn authorization_endpoint(&self, issuer: &str, ingress: Ingress) -> String {
        if ingress != Ingress::Loopback
            && self.pages_served_on(ingress)
            && let Ok(url) = url::Url::parse(issuer)
            && url.scheme() == "https"
        {
            return format!(
                "{}/_airlock/oauth/authorize",
                url.origin().ascii_serialization()
            );
        }
        self.inner.cfg.authorization_endpoint.clone()
    }

    /// The RFC 8414 metadata for `issuer`, as served on `ingress` (split discovery: everything under the issuer but
    /// the authorization endpoint, which is where the person is, see [`AuthServer::authorization_endpoint`]).
    pub fn metadata(&self, issuer: &str, ingress: Ingress) -> Value {
        let issuer = issuer.trim_end_matches('/');
        let auth_methods = ["none", "client_secret_post", "client_secret_basic"];
        json!({
            "issuer": issuer,
            "authorization_endpoint": self.authorization_endpoint(issuer, ingress),
            "token_endpoint": format!("{issuer}/token"),
            "registration_endpoint": format!("{issuer}/register"),
            "revocation_endpoint": format!("{issuer}/revoke"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "scopes_supported": [SCOPE_READ, SCOPE_CALL, SCOPE_OFFLINE],
            "client_id_metadata_document_supported": true,
            "authorization_response_iss_parameter_supported": true,
        })
    }

    /// Authenticates the client of a token/revocation request. `Err` is the `401 invalid_client` answer.
    async fn authenticate_client(
        &self,
        parts: &http::request::Parts,
        form: &HashMap<String, String>,
    ) -> Result<ClientRecord, Response<Body>> {
        let invalid = |why: &str| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", why);
        let mut basic: Option<(String, String)> = None;
        if let Some(auth) = parts.headers.get(header::AUTHORIZATION) {
            let s = auth.to_str().unwrap_or("");
            let Some(b64) = s
                .strip_prefix("Basic ")
                .or_else(|| s.strip_prefix("basic "))
            else {
                return Err(invalid(
                    "unsupported Authorization scheme; use Basic or client_id in the body",
                ));
            };
            let decoded = STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or_else(|| invalid("malformed Basic credentials"))?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(|| invalid("malformed Basic credentials"))?;
            let dec = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_default()
            };
            basic = Some((dec(id), dec(secret)));
        }
        let client_id = match (&basic, form.get("client_id")) {
            (Some((b, _)), Some(f)) if b != f => {
                return Err(invalid(
                    "client_id differs between the Authorization header and the body",
                ));
            }
            (Some((b, _)), _) => b.clone(),
            (None, Some(f)) => f.clone(),
            (None, None) => return Err(invalid("client_id is required")),
        };
        let client = match self.client(&client_id).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Err(invalid(
                    "unknown client; register again (dynamic registration or a client ID metadata document)",
                ));
            }
            Err(e) => {
                tracing::warn!("client lookup: {e}");
                return Err(oauth_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "client lookup failed",
                ));
            }
        };
        let presented = basic
            .as_ref()
            .map(|(_, s)| s.clone())
            .or_else(|| form.get("client_secret").cloned());
        match (&client.secret_hash, presented) {
            (Some(h), Some(s)) => {
                if !tokens::ct_eq(h, &tokens::hash(&s)) {
                    return Err(invalid("wrong client secret"));
                }
            }
            (Some(_), None) => {
                return Err(invalid(
                    "this client must authenticate with its client_secret",
                ));
            }
            (None, Some(_)) => {
                // A public client sending a secret it never got: refuse rather than ignore.
                return Err(invalid(
                    "this client has no secret (token_endpoint_auth_method none)",
                ));
            }
            (None, None) => {}
        }
        if client.kind == ClientKind::Minted {
            return Err(invalid(
                "minted-token clients cannot use the token endpoint",
            ));
        }
        Ok(client)
    }

    async fn token_endpoint(&self, ctx: RequestContext, req: Request<Body>) -> Response<Body> {
        if req.method() != Method::POST {
            return empty(StatusCode::METHOD_NOT_ALLOWED);
        }
        let now = self.now();
        if !self.inner.token_limit.allow(&peer_key(&ctx), now) {
            return too_many();
        }
        let (parts, body) = match read_body(req).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let form = match parse_form(&body) {
            Ok(f) => f,
            Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &e),
        };
        let client = match self.authenticate_client(&parts, &form).await {
            Ok(c) => c,
            Err(r) => return r,
        };
        let resource = form.get("resource").map(String::as_str);
        let resolved = resource.map(|r| self.inner.resources.resolve(r));
        match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {
                let Some(resolved) = resolved else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "resource is required (RFC 8707): the URL of the MCP server",
                    );
                };
                let Some(resolved) = resolved else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_target",
                        "resource names no server exposed here",
                    );
                };
                self.exchange_code(&ctx, &client, &form, resolved, now)
                    .await
            }
            Some("refresh_token") => {
                let server = match resolved {
                    None => None,
                    Some(Some(r)) => Some(r.server_id),
                    Some(None) => {
                        return oauth_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_target",
                            "resource names no server exposed here",
                        );
                    }
                };
                if let (Some(s), Some(c)) = (&server, &ctx.server_id)
                    && s != c
                {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_target",
                        "resource names another server than this issuer's",
                    );
                }
                let server = server.or(ctx.server_id.clone());
                let Some(rt) = form.get("refresh_token") else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "refresh_token is required",
                    );
                };
                match self.refresh(rt, &client.client_id, server).await {
                    Ok(issued) => token_response(issued),
                    Err(RefreshError::InvalidGrant(why)) => {
                        oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &why)
                    }
                    Err(RefreshError::InvalidClient) => oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        "unknown client; register again",
                    ),
                    Err(RefreshError::Internal(e)) => {
                        tracing::warn!("refresh: {e}");
                        oauth_error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "server_error",
                            "internal error",
                        )
                    }
                }
            }
            Some(_) => oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only authorization_code and refresh_token are supported",
            ),
            None => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            ),
        }
    }

    async fn exchange_code(
        &self,
        ctx: &RequestContext,
        client: &ClientRecord,
        form: &HashMap<String, String>,
        resolved: ResolvedResource,
        now: Millis,
    ) -> Response<Body> {
        let refuse = |why: &str| {
            self.audit(
                AuditEntry::new(now, AuditKind::TokenRefused)
                    .client(&client.client_id)
                    .detail(format!("authorization_code: {why}")),
            );
            oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why)
        };
        let Some(code) = form.get("code") else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "code is required",
            );
        };
        let h = tokens::hash(code);
        // Single use: the code is gone after the first attempt, whatever its outcome.
        let (entry, replayed) = {
            let mut st = self.state();
            match st.codes.remove(&h) {
                Some(c) => {
                    st.used_codes
                        .insert(h, (c.grant_id.clone(), c.expires + 3_600_000));
                    (Some(c), None)
                }
                None => (None, st.used_codes.get(&h).map(|(g, _)| g.clone())),
            }
        };
        if let Some(grant) = replayed {
            let _ = self
                .revoke_grants(vec![grant], "authorization code replayed")
                .await;
            return refuse("authorization code already used; the grant is revoked");
        }
        let Some(c) = entry else {
            return refuse("unknown or expired authorization code");
        };
        if c.expires <= now {
            return refuse("authorization code expired");
        }
        if c.client_id != client.client_id {
            return refuse("authorization code of another client");
        }
        match form.get("redirect_uri") {
            Some(r) if *r == c.redirect_uri => {}
            _ => return refuse("redirect_uri must equal the one of the authorization request"),
        }
        let Some(verifier) = form.get("code_verifier") else {
            return refuse("code_verifier is required (PKCE)");
        };
        let valid_verifier = (43..=128).contains(&verifier.len())
            && verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        if !valid_verifier
            || !tokens::ct_eq(tokens::s256(verifier).as_bytes(), c.challenge.as_bytes())
        {
            return refuse("code_verifier does not match the code_challenge");
        }
        if resolved.server_id != c.server_id {
            return refuse("resource names another server than the one approved");
        }
        if let Some(s) = &ctx.server_id
            && *s != c.server_id
        {
            return refuse("this issuer belongs to another server than the one approved");
        }
        match self
            .issue_for_grant(&c.grant_id, true, AuditKind::TokenIssued)
            .await
        {
            Ok(issued) => token_response(issued),
            Err(Error::Invalid(why)) => refuse(&why),
            Err(e) => {
                tracing::warn!("issuing tokens: {e}");
                oauth_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal error",
                )
            }
        }
    }

    async fn register_endpoint(&self, ctx: RequestContext, req: Request<Body>) -> Response<Body> {
        if req.method() != Method::POST {
            return empty(StatusCode::METHOD_NOT_ALLOWED);
        }
        let now = self.now();
        if !self.inner.register_limit.allow(&peer_key(&ctx), now) {
            return too_many();
        }
        let (_, body) = match read_body(req).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let bad = |why: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_client_metadata", why);
        let Ok(meta) = serde_json::from_slice::<Value>(&body) else {
            return bad("the body must be a JSON object of client metadata (RFC 7591)");
        };
        let Some(obj) = meta.as_object() else {
            return bad("the body must be a JSON object");
        };
        let strings = |key: &str| -> Result<Option<Vec<String>>, String> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| format!("{key} must be an array of strings"))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err(format!("{key} must be an array of strings")),
            }
        };
        let redirect_uris = match strings("redirect_uris") {
            Ok(Some(u)) if !u.is_empty() && u.len() <= clients::MAX_REDIRECT_URIS => u,
            Ok(_) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_redirect_uri",
                    "redirect_uris must list 1 to 10 URIs",
                );
            }
            Err(e) => return bad(&e),
        };
        for u in &redirect_uris {
            if let Err(e) = clients::validate_redirect_uri(u) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_redirect_uri", &e);
            }
        }
        let grant_types = match strings("grant_types") {
            Ok(g) => g.unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]),
            Err(e) => return bad(&e),
        };
        if grant_types
            .iter()
            .any(|g| g != "authorization_code" && g != "refresh_token")
        {
            return bad("grant_types may only contain authorization_code and refresh_token");
        }
        let response_types = match strings("response_types") {
            Ok(r) => r.unwrap_or_else(|| vec!["code".into()]),
            Err(e) => return bad(&e),
        };
        if response_types.iter().any(|r| r != "code") {
            return bad("response_types may only contain code");
        }
        let auth_method = obj
            .get("token_endpoint_auth_method")
            .and_then(Value::as_str)
            .unwrap_or("none")
            .to_owned();
        let secret = match auth_method.as_str() {
            "none" => None,
            "client_secret_post" | "client_secret_basic" => Some(tokens::secret("alk_cs_")),
            other => {
                return bad(&format!(
                    "token_endpoint_auth_method {other:?} is not supported (none, client_secret_post, client_secret_basic)"
                ));
            }
        };
        let requested_type = obj.get("application_type").and_then(Value::as_str);
        let fallback = clients::redirect_host(&redirect_uris[0]);
        let record = ClientRecord {
            client_id: tokens::id("dcr_", 12),
            kind: ClientKind::Dynamic,
            name: clients::clean_name(obj.get("client_name").and_then(Value::as_str), &fallback),
            application_type: clients::application_type(&redirect_uris, requested_type),
            redirect_uris,
            auth_method: auth_method.clone(),
            secret_hash: secret.as_deref().map(|s| tokens::hash(s).to_vec()),
            created_ms: now,
        };
        let saved = record.clone();
        let keep = self.inner.cfg.max_dynamic_clients;
        let stored = meta.clone();
        if let Err(e) = self
            .inner
            .db
            .call(move |c| {
                clients::prune_dynamic(c, keep)?;
                clients::save(c, &saved, &stored)
            })
            .await
        {
            tracing::warn!("saving a registered client: {e}");
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error",
            );
        }
        self.audit(
            AuditEntry::new(now, AuditKind::ClientRegistered)
                .client(&record.client_id)
                .detail(format!(
                    "{} ({})",
                    record.name,
                    record.redirect_uris.join(" ")
                )),
        );
        let mut out = json!({
            "client_id": record.client_id,
            "client_id_issued_at": now / 1000,
            "client_name": record.name,
            "redirect_uris": record.redirect_uris,
            "grant_types": grant_types,
            "response_types": ["code"],
            "token_endpoint_auth_method": auth_method,
            "application_type": record.application_type,
        });
        if let Some(s) = secret {
            out["client_secret"] = json!(s);
            out["client_secret_expires_at"] = json!(0);
        }
        json_response(StatusCode::CREATED, &out)
    }

    async fn revoke_endpoint(&self, req: Request<Body>) -> Response<Body> {
        if req.method() != Method::POST {
            return empty(StatusCode::METHOD_NOT_ALLOWED);
        }
        let (parts, body) = match read_body(req).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let form = match parse_form(&body) {
            Ok(f) => f,
            Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &e),
        };
        let client = match self.authenticate_client(&parts, &form).await {
            Ok(c) => c,
            Err(r) => return r,
        };
        let Some(token) = form.get("token") else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "token is required",
            );
        };
        if let Err(e) = self.revoke_presented(token, &client.client_id).await {
            tracing::warn!("revocation: {e}");
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try again",
            );
        }
        no_store(empty(StatusCode::OK))
    }
}

fn token_response(i: Issued) -> Response<Body> {
    let mut v = json!({
        "access_token": i.access,
        "token_type": "Bearer",
        "expires_in": i.expires_in,
        "scope": i.scopes.to_string(),
    });
    if let Some(r) = i.refresh {
        v["refresh_token"] = json!(r);
    }
    json_response(StatusCode::OK, &v)
}
