//! The Anthropic-compatible listener: cloudflared connects with a plain WebSocket and the inner TLS runs inside it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::terminate::Terminator;

/// Bound on the WebSocket upgrade.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest WebSocket message accepted (TLS records are ≤ 16 KiB; this leaves room for batching peers).
const MAX_MESSAGE: usize = 1 << 20;

/// Accepts WebSocket upgrades on any path and subprotocol and hands the carried bytes to `terminator`.
/// Upgrades with an `Origin` header not in `allowed_origins` are refused with 403: no web page may reach this port.
pub async fn serve_websocket(
    listener: TcpListener,
    terminator: Terminator,
    allowed_origins: Vec<String>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let tracker = TaskTracker::new();
    let allowed: std::sync::Arc<[String]> = allowed_origins.into();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let terminator = terminator.clone();
        let allowed = allowed.clone();
        #[allow(clippy::result_large_err)] // the callback's signature is tungstenite's contract
        tracker.spawn(async move {
            let peer = peer.to_string();
            let callback = |req: &Request, resp: Response| check_upgrade(req, resp, &allowed);
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_MESSAGE))
                .max_frame_size(Some(MAX_MESSAGE));
            let upgrade =
                tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config));
            match tokio::time::timeout(UPGRADE_TIMEOUT, upgrade).await {
                Ok(Ok(ws)) => terminator.serve(WsBytes::new(ws), &peer).await,
                Ok(Err(e)) => tracing::info!(%peer, "websocket upgrade refused: {e}"),
                Err(_) => tracing::info!(%peer, "websocket upgrade timed out"),
            }
        });
    }
    terminator.shutdown();
    tracker.close();
    tracker.wait().await;
    Ok(())
}

#[allow(clippy::result_large_err)] // the signature is tungstenite's callback contract
fn check_upgrade(
    req: &Request,
    mut resp: Response,
    allowed: &[String],
) -> Result<Response, ErrorResponse> {
    if let Some(origin) = req.headers().get("origin") {
        let ok = origin
            .to_str()
            .is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)));
        if !ok {
            let mut refuse =
                ErrorResponse::new(Some("browser origins may not open this tunnel".into()));
            *refuse.status_mut() = StatusCode::FORBIDDEN;
            return Err(refuse);
        }
    }
    // Any subprotocol: echo the first one offered, as some clients insist on a selection.
    if let Some(first) = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|p| !p.is_empty())
        && let Ok(value) = HeaderValue::from_str(first)
    {
        resp.headers_mut().insert("sec-websocket-protocol", value);
    }
    Ok(resp)
}

/// A WebSocket as a byte stream: binary and text messages are read as bytes; writes go out as binary messages.
pub struct WsBytes<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
    eof: bool,
}

impl<S> std::fmt::Debug for WsBytes<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsBytes")
            .field("buffered", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<S> WsBytes<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: Bytes::new(),
            eof: false,
        }
    }
}

fn to_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.pending = b,
                Some(Ok(Message::Text(t))) => self.pending = Bytes::from(t),
                // Pings are answered by tungstenite on the next write or flush.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => self.eof = true,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        let n = data.len().min(MAX_MESSAGE / 2);
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(&data[..n])))
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(to_io)
    }
}
