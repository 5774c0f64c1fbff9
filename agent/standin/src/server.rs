//! Starting and stopping a stand-in in-process.
//!
//! [`Server::start`] binds the listener on the caller's thread (so the
//! address is known and taken when it returns), then serves on a dedicated
//! thread with its own single-threaded tokio runtime, so it works the same
//! from synchronous tests and from inside an async runtime. Dropping the
//! [`Server`] stops it: open connections (blocked queries, hung requests)
//! are dropped with the runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::admin::Admin;
use crate::config::Config;
use crate::world::Shared;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The runtime or its thread could not be created.
    #[error("cannot start the server runtime")]
    Runtime(#[source] std::io::Error),
}

/// A running stand-in. Dropping it stops the server.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `config.listen` and starts serving.
    ///
    /// # Errors
    /// When the address cannot be bound or the runtime cannot start.
    pub fn start(config: Config) -> Result<Self, StartError> {
        let bind = |source| StartError::Bind {
            addr: config.listen,
            source,
        };
        let listener = std::net::TcpListener::bind(config.listen).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        let shared = Arc::new(Shared::new(config, addr));
        let (tx, rx) = oneshot::channel();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("consul-standin-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(crate::http::serve(listener, serving, rx));
                runtime.shutdown_background();
            })
            .map_err(StartError::Runtime)?;
        tracing::info!(address = %addr, datacenter = %shared.config.datacenter, "consul-standin started");
        Ok(Self {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, as `CONSUL_HTTP_ADDR` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An in-process admin handle.
    pub fn admin(&self) -> Admin {
        Admin::local(self.shared.clone())
    }

    /// A blocking HTTP client for this server (for tests).
    pub fn client(&self) -> crate::client::HttpClient {
        crate::client::HttpClient::new(self.addr)
    }

    /// Blocks until the server stops (it only stops when dropped, so this
    /// serves forever; for the binary).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
