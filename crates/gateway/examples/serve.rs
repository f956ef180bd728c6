//! Manual check: bridge one stdio MCP server on the loopback ingress.
//!
//! `cargo run -p airlock-gateway --example serve -- PORT TOKEN SLUG COMMAND [ARGS...]`
//! then talk to `http://127.0.0.1:PORT/SLUG/mcp` with `Authorization: Bearer TOKEN`.
//! A COMMAND starting with `http://` is exposed as an HTTP upstream instead.

use std::{collections::BTreeMap, sync::Arc};

use airlock_gateway::{
    AuthError, Authorizer, BearerToken, Gateway, GatewayOptions, Route, UpstreamSpec,
    serve_loopback,
};
use tokio_util::sync::CancellationToken;

/// `TOKEN` = `-` disables authentication (for local conformance runs only).
struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(&self, _route_id: &str, _headers: &http::HeaderMap) -> Result<(), AuthError> {
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let usage = "usage: serve PORT TOKEN SLUG COMMAND [ARGS...]";
    let port: u16 = args.next().ok_or(usage)?.parse()?;
    let token = args.next().ok_or(usage)?;
    let slug = args.next().ok_or(usage)?;
    let command = args.next().ok_or(usage)?;
    let upstream = if command.starts_with("http://") {
        UpstreamSpec::Http { url: command }
    } else {
        UpstreamSpec::Stdio {
            command,
            args: args.collect(),
            env: BTreeMap::new(),
            cwd: None,
        }
    };
    let gateway = Gateway::new(GatewayOptions::default());
    gateway
        .expose(Route {
            id: slug.clone(),
            slug: slug.clone(),
            upstream,
        })
        .await?;
    let mut events = gateway.subscribe();
    tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            tracing::info!("status: {}", serde_json::to_string(&ev).unwrap_or_default());
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!("serving http://127.0.0.1:{port}/{slug}/mcp");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_loopback(
        gateway.clone(),
        listener,
        if token == "-" {
            Arc::new(AllowAll) as Arc<dyn Authorizer>
        } else {
            Arc::new(BearerToken::new(token)) as Arc<dyn Authorizer>
        },
        shutdown.clone(),
    ));
    tokio::signal::ctrl_c().await?;
    shutdown.cancel();
    gateway.shutdown().await;
    server.await??;
    Ok(())
}
