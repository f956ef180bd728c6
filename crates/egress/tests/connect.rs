//! `connect_checked` end to end with injected resolvers and dialers: every refusal must happen
//! before any dial attempt.

use std::net::{IpAddr, SocketAddr};

use airlock_egress::{
    EgressError, IpPolicy, Purpose, RecordingDialer, StaticResolver, SystemResolver,
    connect_checked,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP literal")
}

async fn refused(
    host: &str,
    policy: &IpPolicy,
    purpose: Purpose,
    resolver: &StaticResolver,
) -> EgressError {
    let dialer = RecordingDialer::refusing();
    let result = connect_checked(host, 8080, policy, purpose, resolver, &dialer).await;
    let err = match result {
        Ok((_, addr)) => panic!("{host} was dialled at {addr}"),
        Err(e) => e,
    };
    assert!(
        dialer.attempts().is_empty(),
        "refusal for {host} came after dialling {:?}",
        dialer.attempts()
    );
    err
}

/// Allowed: the refusing dialer must have been asked for exactly `expect`.
async fn dialled(
    host: &str,
    policy: &IpPolicy,
    purpose: Purpose,
    resolver: &StaticResolver,
) -> Vec<SocketAddr> {
    let dialer = RecordingDialer::refusing();
    let err = connect_checked(host, 8080, policy, purpose, resolver, &dialer)
        .await
        .err()
        .expect("the refusing dialer never connects");
    assert!(matches!(err, EgressError::Connect { .. }), "{err}");
    dialer.attempts()
}

#[tokio::test]
async fn metadata_address_refused_without_dialling() {
    let r = StaticResolver::new();
    for policy in [
        IpPolicy::default(),
        IpPolicy::validation_disabled(),
        IpPolicy::from_config(&["0.0.0.0/0"], false).unwrap(),
    ] {
        let err = refused("169.254.169.254", &policy, Purpose::UserExposed, &r).await;
        assert!(matches!(err, EgressError::LinkLocal { .. }), "{err}");
    }
}

#[tokio::test]
async fn public_literal_and_public_name_refused() {
    let r = StaticResolver::new().with("evil.example", [ip("8.8.8.8")]);
    let err = refused("8.8.8.8", &IpPolicy::default(), Purpose::UserExposed, &r).await;
    assert_eq!(
        err.to_string(),
        "IP validation failed: 8.8.8.8 is not a private address"
    );
    let err = refused(
        "evil.example",
        &IpPolicy::default(),
        Purpose::UserExposed,
        &r,
    )
    .await;
    assert_eq!(
        err.to_string(),
        "IP validation failed: 8.8.8.8 is not a private address"
    );
}

#[tokio::test]
async fn mixed_answer_refused_as_a_whole() {
    let r = StaticResolver::new()
        .with("rebind.example", [ip("10.0.0.5"), ip("93.184.216.34")])
        .with("meta.example", [ip("192.168.1.2"), ip("169.254.169.254")]);
    let err = refused("rebind.example", &IpPolicy::default(), Purpose::Fetch, &r).await;
    assert!(
        matches!(err, EgressError::NotAllowed { ip } if ip == "93.184.216.34".parse::<IpAddr>().unwrap())
    );
    let err = refused("meta.example", &IpPolicy::default(), Purpose::Fetch, &r).await;
    assert!(matches!(err, EgressError::LinkLocal { .. }), "{err}");
}

#[tokio::test]
async fn rfc1918_allowed_by_default_and_dialled_in_order() {
    let r = StaticResolver::new().with(
        "mcp.corp",
        [ip("10.1.2.3"), ip("192.168.7.7"), ip("10.1.2.3")],
    );
    let attempts = dialled("MCP.corp.", &IpPolicy::default(), Purpose::Fetch, &r).await;
    assert_eq!(
        attempts,
        vec![
            "10.1.2.3:8080".parse::<SocketAddr>().unwrap(),
            "192.168.7.7:8080".parse().unwrap()
        ]
    );
}

#[tokio::test]
async fn allowed_ips_replace_the_default() {
    let r = StaticResolver::new()
        .with("public.example", [ip("203.0.113.9")])
        .with("private.example", [ip("10.0.0.9")]);
    let policy = IpPolicy::from_config(&["203.0.113.0/24"], false).unwrap();
    assert_eq!(
        dialled("public.example", &policy, Purpose::Fetch, &r).await,
        vec!["203.0.113.9:8080".parse::<SocketAddr>().unwrap()]
    );
    let err = refused("private.example", &policy, Purpose::Fetch, &r).await;
    assert!(matches!(err, EgressError::NotAllowed { .. }), "{err}");
}

#[tokio::test]
async fn disabled_validation_allows_public_but_not_metadata() {
    let r = StaticResolver::new().with("public.example", [ip("8.8.8.8")]);
    let policy = IpPolicy::validation_disabled();
    assert_eq!(
        dialled("public.example", &policy, Purpose::Fetch, &r).await,
        vec!["8.8.8.8:8080".parse::<SocketAddr>().unwrap()]
    );
    refused("169.254.169.254", &policy, Purpose::Fetch, &r).await;
    refused("fe80::1", &policy, Purpose::Fetch, &r).await;
}

#[tokio::test]
async fn loopback_only_for_user_exposed() {
    let r = StaticResolver::new().with("localhost", [ip("127.0.0.1"), ip("::1")]);
    for policy in [
        IpPolicy::default(),
        IpPolicy::from_config(&["127.0.0.0/8", "::1"], false).unwrap(),
    ] {
        let err = refused("localhost", &policy, Purpose::Fetch, &r).await;
        assert!(matches!(err, EgressError::Loopback { .. }), "{err}");
        let err = refused("[::ffff:127.0.0.1]", &policy, Purpose::Fetch, &r).await;
        assert!(matches!(err, EgressError::Loopback { .. }), "{err}");
        assert_eq!(
            dialled("localhost", &policy, Purpose::UserExposed, &r)
                .await
                .len(),
            2
        );
    }
}

#[tokio::test]
async fn unknown_name_is_a_resolve_error_without_dialling() {
    let r = StaticResolver::new();
    let err = refused("nowhere.example", &IpPolicy::default(), Purpose::Fetch, &r).await;
    assert!(matches!(err, EgressError::Resolve { .. }), "{err}");
    let empty = StaticResolver::new().with("empty.example", []);
    let err = refused(
        "empty.example",
        &IpPolicy::default(),
        Purpose::Fetch,
        &empty,
    )
    .await;
    assert!(matches!(err, EgressError::NoAddresses { .. }), "{err}");
}

#[tokio::test]
async fn real_loopback_listener_for_user_exposed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
    });
    let dialer = RecordingDialer::tcp();
    let (mut stream, addr) = connect_checked(
        "127.0.0.1",
        port,
        &IpPolicy::default(),
        Purpose::UserExposed,
        &SystemResolver,
        &dialer,
    )
    .await
    .unwrap();
    assert_eq!(addr, SocketAddr::new(ip("127.0.0.1"), port));
    assert_eq!(dialer.attempts(), vec![addr]);
    stream.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    server.await.unwrap();

    // The same listener address is refused for a fetch, before any dial.
    let dialer = RecordingDialer::tcp();
    let err = connect_checked(
        "127.0.0.1",
        port,
        &IpPolicy::default(),
        Purpose::Fetch,
        &SystemResolver,
        &dialer,
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, EgressError::Loopback { .. }), "{err}");
    assert!(dialer.attempts().is_empty());
}

/// A resolver that never answers, and a dialer that never connects (and records attempts).
struct Hanging;

impl airlock_egress::Resolver for Hanging {
    fn resolve<'a>(
        &'a self,
        _host: &'a str,
        _port: u16,
    ) -> airlock_egress::BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(std::future::pending())
    }
}

#[derive(Default)]
struct Stalling(std::sync::Mutex<Vec<SocketAddr>>);

impl airlock_egress::Dialer for Stalling {
    fn dial(
        &self,
        addr: SocketAddr,
    ) -> airlock_egress::BoxFuture<'_, std::io::Result<airlock_egress::BoxStream>> {
        self.0.lock().expect("not poisoned").push(addr);
        Box::pin(std::future::pending())
    }
}

#[tokio::test(start_paused = true)]
async fn resolve_and_connect_are_time_bounded() {
    let timeouts = airlock_egress::Timeouts::default();
    let dialer = RecordingDialer::refusing();
    let err = airlock_egress::connect_checked_with(
        "slow.example",
        80,
        &IpPolicy::default(),
        Purpose::Fetch,
        &Hanging,
        &dialer,
        timeouts,
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, EgressError::ResolveTimeout { .. }), "{err}");
    assert!(dialer.attempts().is_empty());

    // Each stalled connect gives up after `connect`; the whole thing after `total`.
    let many: Vec<IpAddr> = (1..=8).map(|i| ip(&format!("10.0.0.{i}"))).collect();
    let r = StaticResolver::new().with("many.example", many);
    let stalling = Stalling::default();
    let timeouts = airlock_egress::Timeouts {
        total: std::time::Duration::from_secs(25),
        ..timeouts
    };
    let start = tokio::time::Instant::now();
    let err = airlock_egress::connect_checked_with(
        "many.example",
        80,
        &IpPolicy::default(),
        Purpose::Fetch,
        &r,
        &stalling,
        timeouts,
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, EgressError::Timeout { .. }), "{err}");
    assert_eq!(start.elapsed(), timeouts.total);
    let tried = stalling.0.lock().unwrap().len();
    assert_eq!(tried, 3, "attempts at 0 s, 10 s and 20 s; gave up at 25 s");
}
