//! Connections to the one Consul address, whatever the request URI says:
//! TCP, TLS over TCP or a unix socket, each holding one of the connection
//! slots for as long as it lives (see [`crate::http`]).

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where connections go.
#[derive(Debug)]
pub enum Target {
    /// `host:port`.
    Tcp(String),
    /// A unix socket.
    Unix(PathBuf),
}

/// Makes connections to the one Consul address, whatever the URI says.
#[derive(Clone)]
pub struct Connector {
    /// Connection slots (`--max-connections`).
    pub slots: Arc<Semaphore>,
    /// Where.
    pub target: Arc<Target>,
    /// TLS, with the name to send and verify.
    pub tls: Option<Arc<(tokio_rustls::TlsConnector, ServerName<'static>)>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A connection; counted open until dropped.
pub struct Conn {
    io: TokioIo<Box<dyn Io>>,
    metrics: Arc<Metrics>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let slot = this
                .slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| io::Error::other("connector closed"))?;
            let connect = async {
                let raw: Box<dyn Io> = match &*this.target {
                    Target::Tcp(addr) => {
                        let s = tokio::net::TcpStream::connect(addr.as_str()).await?;
                        let _ = s.set_nodelay(true);
                        Box::new(s)
                    }
                    Target::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
                };
                match &this.tls {
                    Some(tls) => {
                        let (connector, name) = &**tls;
                        let s = connector.connect(name.clone(), raw).await?;
                        Ok::<Box<dyn Io>, io::Error>(Box::new(s))
                    }
                    None => Ok(raw),
                }
            };
            let io = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            this.metrics.connections.fetch_add(1, Ordering::Relaxed);
            this.metrics
                .connections_opened
                .fetch_add(1, Ordering::Relaxed);
            Ok(Conn {
                io: TokioIo::new(io),
                metrics: this.metrics.clone(),
                _slot: slot,
            })
        })
    }
}
