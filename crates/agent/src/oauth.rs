//! The OAuth glue: the authorization server ([`airlock_oauth::AuthServer`]) behind the gateway's resource-server
//! traits ([`AccessVerifier`], [`AuthEndpoints`], [`AuditSink`]), and the gateway's route table as the
//! authorization server's `resource → server` lookup.
//!
//! The database is `AIRLOCK_HOME/oauth.sqlite` (0600); the authorization endpoint is the loopback gateway's
//! `/_airlock/oauth/authorize` (the person at the device approves there, in the UI or with `airlock approve`). With
//! `[oauth] remote_approval = true` a relay hostname's metadata names the page on that hostname instead, for a
//! browser elsewhere: it shows a code, and approving at the device needs it.
//!
//! There is no other credential: every caller holds a token the authorization server issued for one server
//! (through the OAuth flow, approved at the device, or minted with `airlock token create`).

use std::sync::Arc;

use airlock_gateway::{
    Access, AccessVerifier, AuditSink, AuthEndpoint, AuthEndpoints, EndpointContext, Gateway,
    IngressKind, McpCall, ResourceServer, Scopes, TokenRejection,
};
use airlock_oauth as oauth;
use axum::body::Body;
use futures::future::BoxFuture;
use http::{Request, Response};

use crate::AgentError;

/// The gateway's traits implemented by the authorization server.
#[derive(Clone)]
pub struct OAuthGlue {
    pub server: oauth::AuthServer,
    /// Woken on every recorded MCP call; the agent turns it into coalesced `audit` events.
    pub audit_recorded: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for OAuthGlue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthGlue").finish_non_exhaustive()
    }
}

impl AccessVerifier for OAuthGlue {
    fn verify(&self, server_id: &str, bearer_token: &str) -> Result<Access, TokenRejection> {
        self.server
            .verify(server_id, bearer_token)
            .map(|a| Access {
                grant_id: a.grant_id,
                client_id: a.client_id,
                client_name: a.client_name,
                scopes: Scopes {
                    read: a.scopes.read,
                    call: a.scopes.call,
                },
                tools: a.tools,
            })
            .map_err(|r| match r {
                oauth::Rejection::Invalid => TokenRejection::Invalid,
                oauth::Rejection::Expired => TokenRejection::Expired,
                oauth::Rejection::Revoked => TokenRejection::Revoked,
                oauth::Rejection::WrongResource => TokenRejection::WrongResource,
            })
    }
}

fn ingress(k: IngressKind) -> oauth::Ingress {
    match k {
        IngressKind::Loopback => oauth::Ingress::Loopback,
        IngressKind::AnthropicTunnel => oauth::Ingress::AnthropicTunnel,
        IngressKind::Relay => oauth::Ingress::Relay,
    }
}

impl AuthEndpoints for OAuthGlue {
    fn handle(
        &self,
        ctx: EndpointContext,
        req: Request<Body>,
    ) -> BoxFuture<'static, Response<Body>> {
        let endpoint = match ctx.endpoint {
            AuthEndpoint::AuthorizationServerMetadata => {
                oauth::Endpoint::AuthorizationServerMetadata
            }
            AuthEndpoint::OpenIdConfiguration => oauth::Endpoint::OpenIdConfiguration,
            AuthEndpoint::Token => oauth::Endpoint::Token,
            AuthEndpoint::Register => oauth::Endpoint::Register,
            AuthEndpoint::Revoke => oauth::Endpoint::Revoke,
            AuthEndpoint::Pages => oauth::Endpoint::Pages,
        };
        self.server.handle(
            oauth::RequestContext {
                server_id: ctx.server_id,
                endpoint,
                issuer: ctx.issuer,
                resource: ctx.resource,
                origin: ctx.origin,
                peer: ctx.peer,
                ingress: ingress(ctx.ingress),
            },
            req,
        )
    }
}

impl AuditSink for OAuthGlue {
    fn mcp_call(&self, c: McpCall) {
        self.server.record_mcp_call(oauth::McpCall {
            server_id: c.server_id,
            grant_id: c.grant_id,
            client_id: c.client_id,
            method: c.method,
            tool: c.tool,
            status: c.status,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            duration: c.duration,
            ingress: ingress(c.ingress),
        });
        self.audit_recorded.notify_one();
    }
}

/// `resource` → server through the gateway's route table (every ingress's resource URLs are aliases).
struct Resources(Gateway);

impl oauth::ResourceResolver for Resources {
    fn resolve(&self, resource: &str) -> Option<oauth::ResolvedResource> {
        self.0
            .resolve_resource(resource)
            .map(|r| oauth::ResolvedResource {
                server_id: r.server_id,
                issuer: r.issuer,
            })
    }

    fn server_name(&self, server_id: &str) -> Option<String> {
        self.0.slug_for_route(server_id)
    }
}

/// Opens the authorization server for this home and gateway (`remote_approval`: `[oauth] remote_approval`).
pub async fn open(
    db_path: std::path::PathBuf,
    gateway: &Gateway,
    gateway_port: u16,
    remote_approval: bool,
) -> Result<(oauth::AuthServer, ResourceServer, Arc<tokio::sync::Notify>), AgentError> {
    let mut config = oauth::Config::new(
        db_path,
        format!("http://127.0.0.1:{gateway_port}/_airlock/oauth/authorize"),
    );
    config.remote_approval = remote_approval;
    let server = oauth::AuthServer::open(oauth::Options::new(
        config,
        Arc::new(Resources(gateway.clone())),
    ))
    .await
    .map_err(|e| AgentError::Invalid(e.to_string()))?;
    let audit_recorded = Arc::new(tokio::sync::Notify::new());
    let glue = Arc::new(OAuthGlue {
        server: server.clone(),
        audit_recorded: audit_recorded.clone(),
    });
    let rs = ResourceServer::new(glue.clone(), glue.clone(), glue);
    Ok((server, rs, audit_recorded))
}
