//! Connecting to an already-checked socket address, behind a trait.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::resolve::BoxFuture;

/// What a [`Dialer`] hands back: any bidirectional byte stream.
pub trait EgressIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> EgressIo for T {}

/// A boxed [`EgressIo`] (implements `AsyncRead + AsyncWrite`).
pub type BoxStream = Box<dyn EgressIo>;

/// Opens a connection to one socket address. Never resolves names: it only ever sees
/// addresses that already passed the policy.
pub trait Dialer: Send + Sync {
    /// Connect to `addr`.
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<BoxStream>>;
}

/// Plain TCP (`TCP_NODELAY` set).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpDialer;

impl Dialer for TcpDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

/// Records every attempted dial. Either forwards to [`TcpDialer`] ([`RecordingDialer::tcp`])
/// or refuses every attempt without touching the network ([`RecordingDialer::refusing`]).
/// Clones share the record.
#[derive(Debug, Clone)]
pub struct RecordingDialer {
    attempts: Arc<Mutex<Vec<SocketAddr>>>,
    forward: bool,
}

impl RecordingDialer {
    /// Record, then really connect over TCP.
    pub fn tcp() -> Self {
        Self {
            attempts: Arc::default(),
            forward: true,
        }
    }

    /// Record, then fail with `ConnectionRefused`; nothing leaves the machine.
    pub fn refusing() -> Self {
        Self {
            attempts: Arc::default(),
            forward: false,
        }
    }

    /// Every address dialled so far, in order.
    pub fn attempts(&self) -> Vec<SocketAddr> {
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Dialer for RecordingDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<BoxStream>> {
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(addr);
        Box::pin(async move {
            if self.forward {
                TcpDialer.dial(addr).await
            } else {
                Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "RecordingDialer::refusing never connects",
                ))
            }
        })
    }
}
