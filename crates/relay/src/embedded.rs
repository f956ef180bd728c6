//! Port routes for a relay on loopback (the agent's embedded default).
//!
//! A client that opens `https://127.0.0.1:<port>/…` sends no SNI (IP literals are never sent as SNI), so the relay's
//! public listener cannot route it. A *port route* fixes that without touching the client's TLS: a loopback listener
//! per exposed server accepts the client's connection, dials the relay's public port and writes a **routing
//! preface** first — a genuine TLS ClientHello naming `<slug>.port.<tunnel domain>` — then splices the client's raw
//! bytes after it. The relay routes the connection by that SNI like any other (it still sees only ciphertext), and the
//! agent, on receiving a stream whose SNI has the `.port.` form, reads and drops the preface with [`skip_preface`] and
//! terminates the client's own TLS for that one server.
//!
//! The preface is discarded before any TLS starts on the agent side, so it is never part of a handshake transcript:
//! the client's TLS session is end-to-end between the client and the agent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The label that marks a port-route SNI: `<slug>.port.<tunnel domain>`.
pub const PORT_LABEL: &str = "port";
/// Largest preface accepted by [`skip_preface`].
pub const MAX_PREFACE: usize = 16 * 1024;
/// How long the relay may take to accept the forwarded connection.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Port-route errors.
#[derive(Debug, thiserror::Error)]
pub enum PortRouteError {
    #[error("`{0}` is not a valid TLS server name")]
    BadName(String),
    #[error("building the routing preface: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the routing preface is malformed: {0}")]
    BadPreface(&'static str),
    #[error("reading the routing preface: {0}")]
    Io(#[from] std::io::Error),
}

/// The SNI of a port route for `slug` in `tunnel_domain`.
pub fn port_sni(slug: &str, tunnel_domain: &str) -> String {
    format!("{slug}.{PORT_LABEL}.{tunnel_domain}")
}

/// The slug of a port-route SNI (`<slug>.port.<tunnel_domain>`), `None` for any other name.
pub fn port_slug<'a>(sni: &'a str, tunnel_domain: &str) -> Option<&'a str> {
    let head = sni.strip_suffix(tunnel_domain)?.strip_suffix('.')?;
    let slug = head.strip_suffix(PORT_LABEL)?.strip_suffix('.')?;
    (!slug.is_empty() && !slug.contains('.')).then_some(slug)
}

/// A TLS ClientHello (one or more records) naming `sni`, produced by rustls: what the relay's SNI reader expects.
pub fn routing_preface(sni: &str) -> Result<Vec<u8>, PortRouteError> {
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned())
        .map_err(|_| PortRouteError::BadName(sni.to_owned()))?;
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}

/// Reads exactly one ClientHello (the routing preface) from `io` and drops it; what follows is the client's own
/// bytes. Reads no byte past the preface.
pub async fn skip_preface<R: AsyncRead + Unpin>(io: &mut R) -> Result<(), PortRouteError> {
    let mut total = 0usize;
    let mut needed: Option<usize> = None;
    let mut have = 0usize;
    loop {
        let mut header = [0u8; 5];
        io.read_exact(&mut header).await?;
        if header[0] != 22 {
            return Err(PortRouteError::BadPreface("not a TLS handshake record"));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        total += 5 + len;
        if len == 0 || total > MAX_PREFACE {
            return Err(PortRouteError::BadPreface("record length out of bounds"));
        }
        let mut body = vec![0u8; len];
        io.read_exact(&mut body).await?;
        if needed.is_none() {
            if body.len() < 4 || body[0] != 1 {
                return Err(PortRouteError::BadPreface("not a ClientHello"));
            }
            let msg =
                (usize::from(body[1]) << 16) | (usize::from(body[2]) << 8) | usize::from(body[3]);
            needed = Some(msg + 4);
        }
        have += len;
        match needed {
            Some(n) if have == n => return Ok(()),
            Some(n) if have > n => {
                return Err(PortRouteError::BadPreface(
                    "extra handshake bytes after the ClientHello",
                ));
            }
            _ => {}
        }
    }
}

/// Serves one port route: every connection accepted on `listener` is forwarded to the relay's public listener
/// `relay_public` behind a routing preface for `sni`. Returns when `stop` fires (open connections are cut).
pub async fn serve_port_route(
    listener: TcpListener,
    relay_public: SocketAddr,
    sni: String,
    stop: CancellationToken,
) {
    let preface: Arc<[u8]> = match routing_preface(&sni) {
        Ok(p) => p.into(),
        Err(e) => {
            tracing::warn!(%sni, error = %e, "port route not served");
            return;
        }
    };
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let (client, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "port route: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let preface = preface.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = forward(client, relay_public, &preface) => if let Err(e) = r {
                    tracing::debug!(client = %peer, error = %e, "port route connection ended");
                },
            }
        });
    }
    tracker.close();
}

async fn forward(
    mut client: TcpStream,
    relay_public: SocketAddr,
    preface: &[u8],
) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let mut upstream = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(relay_public))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "relay did not answer"))??;
    let _ = upstream.set_nodelay(true);
    upstream.write_all(preface).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sni::{ClientHelloParser, Parsed};

    #[test]
    fn port_names_round_trip() {
        let sni = port_sni("everything", "k3j9.airlock.localhost");
        assert_eq!(sni, "everything.port.k3j9.airlock.localhost");
        assert_eq!(
            port_slug(&sni, "k3j9.airlock.localhost"),
            Some("everything")
        );
        assert_eq!(
            port_slug(
                "everything.k3j9.airlock.localhost",
                "k3j9.airlock.localhost"
            ),
            None
        );
        assert_eq!(
            port_slug("a.b.port.k3j9.airlock.localhost", "k3j9.airlock.localhost"),
            None
        );
        assert_eq!(
            port_slug("port.k3j9.airlock.localhost", "k3j9.airlock.localhost"),
            None
        );
        assert_eq!(
            port_slug("x.port.other.airlock.localhost", "k3j9.airlock.localhost"),
            None
        );
    }

    #[tokio::test]
    async fn the_relay_reads_the_preface_sni_and_the_agent_strips_exactly_the_preface() {
        let sni = port_sni("echo", "t1.airlock.localhost");
        let preface = routing_preface(&sni).unwrap();
        let mut parser = ClientHelloParser::default();
        assert_eq!(parser.push(&preface).unwrap(), Parsed::Sni(sni.clone()));

        // The client's own bytes follow the preface; skip_preface must leave them untouched.
        let mut wire = preface.clone();
        wire.extend_from_slice(b"\x16\x03\x01client-bytes");
        let mut reader = &wire[..];
        skip_preface(&mut reader).await.unwrap();
        assert_eq!(reader, b"\x16\x03\x01client-bytes");

        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            &[22, 3, 1, 0, 4, 2, 0, 0, 0][..],
        ] {
            let mut r = bad;
            assert!(skip_preface(&mut r).await.is_err());
        }
        let mut truncated = &preface[..preface.len() - 1];
        assert!(skip_preface(&mut truncated).await.is_err());
    }
}
