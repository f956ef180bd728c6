//! Upstream IP validation through the gateway: refusals happen on the resolved address, before any dial.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use airlock_egress::{IpPolicy, RecordingDialer, StaticResolver};
use airlock_gateway::{Egress, Gateway, GatewayError, GatewayOptions, Route, UpstreamSpec};
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;

fn gateway(policy: IpPolicy, resolver: StaticResolver, dialer: RecordingDialer) -> Gateway {
    Gateway::new(GatewayOptions {
        egress: Egress {
            policy,
            resolver: Arc::new(resolver),
            dialer: Arc::new(dialer),
        },
        ..GatewayOptions::default()
    })
}

async fn call(gw: &Gateway, id: &str) -> (StatusCode, String) {
    let req = Request::post("/mcp")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#))
        .unwrap();
    let resp = gw.handle(id, req).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn http_route(id: &str, url: &str) -> Route {
    Route {
        id: id.into(),
        slug: id.into(),
        upstream: UpstreamSpec::Http { url: url.into() },
    }
}

#[tokio::test]
async fn metadata_and_public_literals_are_refused_at_expose() {
    let dialer = RecordingDialer::tcp();
    let gw = gateway(IpPolicy::default(), StaticResolver::new(), dialer.clone());
    for url in ["http://169.254.169.254:80/latest", "http://8.8.8.8:80/mcp"] {
        let err = gw.expose(http_route("x", url)).await.unwrap_err();
        assert!(
            matches!(err, GatewayError::UpstreamRefused { .. }),
            "{url}: {err}"
        );
    }
    assert!(dialer.attempts().is_empty());
}

#[tokio::test]
async fn names_resolving_to_public_or_metadata_addresses_are_refused_before_dialling() {
    let dialer = RecordingDialer::tcp();
    let resolver = StaticResolver::new()
        .with("public.test", [IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34))])
        .with(
            "metadata.test",
            [IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254))],
        )
        .with(
            "mixed.test",
            [
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
                IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
            ],
        );
    let gw = gateway(IpPolicy::default(), resolver, dialer.clone());
    for (id, url, needle) in [
        (
            "public",
            "http://public.test:9000",
            "is not a private address",
        ),
        ("meta", "http://metadata.test:80", "169.254.169.254"),
        ("mixed", "http://mixed.test:9000", "8.8.8.8"),
    ] {
        gw.expose(http_route(id, url)).await.unwrap();
        let (status, body) = call(&gw, id).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{url}");
        assert!(body.contains(needle), "{url}: {body}");
    }
    assert!(
        dialer.attempts().is_empty(),
        "no connection may be attempted: {:?}",
        dialer.attempts()
    );
}

#[tokio::test]
async fn allowed_ips_replaces_the_default_and_a_resolved_private_name_is_dialled() {
    // A real loopback upstream, reached through a name: loopback is allowed for servers the user exposed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(|| async { "pong" });
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dialer = RecordingDialer::tcp();
    let resolver = StaticResolver::new()
        .with("local.test", [IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .with("corp.test", [IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))]);
    let policy = IpPolicy::from_config(&["192.168.0.0/16"], false).unwrap();
    let gw = gateway(policy, resolver, dialer.clone());
    gw.expose(http_route("local", &format!("http://local.test:{port}")))
        .await
        .unwrap();
    let (status, body) = call(&gw, "local").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "pong"));
    assert_eq!(dialer.attempts().len(), 1);

    // 10/8 is no longer allowed once allowed_ips names only 192.168/16.
    gw.expose(http_route("corp", "http://corp.test:9000"))
        .await
        .unwrap();
    let (status, body) = call(&gw, "corp").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("10.1.2.3"), "{body}");
    assert_eq!(
        dialer.attempts().len(),
        1,
        "the refused name was not dialled"
    );
}
