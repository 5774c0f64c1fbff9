//! The HTTP server: listener, connections (HTTP/1.1 with keep-alive), the
//! admin API under `/_standin/`, and fault injection around the Consul API.
//!
//! Faults are carried out here because some act below HTTP: `Reset` sets
//! `SO_LINGER` 0 on a duplicate of the connection's socket and drops the
//! connection, `CutBody` announces the full `Content-Length` and then fails
//! the body so hyper closes the connection mid-body.

mod admin_routes;
mod agent;
mod api;
mod blocking;
mod decode;
mod endpoints;
mod peering;
pub(crate) mod query;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinSet;

pub(crate) use endpoints::entry_parts;

use crate::fault::FaultKind;
use crate::world::Shared;

/// The largest request body read (registrations and config entries are small).
const MAX_BODY_BYTES: usize = 4 << 20;

/// An answer before faults and framing.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        let text = text.into();
        let headers = if text.is_empty() {
            Vec::new()
        } else {
            vec![("Content-Type", "text/plain; charset=utf-8".to_owned())]
        };
        Self {
            status,
            headers,
            body: text.into_bytes(),
        }
    }

    pub fn json(status: u16, value: &serde_json::Value, pretty: bool) -> Self {
        let mut body = if pretty {
            let mut b = serde_json::to_vec_pretty(value).unwrap_or_default();
            b.push(b'\n');
            b
        } else {
            serde_json::to_vec(value).unwrap_or_default()
        };
        if body.is_empty() {
            body = b"null".to_vec();
        }
        Self {
            status,
            headers: vec![("Content-Type", "application/json".to_owned())],
            body,
        }
    }
}

/// A response body that is either whole or cut short on purpose.
pub(crate) enum OutBody {
    Full(Option<Bytes>),
    Cut {
        part: Option<Bytes>,
        pause: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            OutBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            OutBody::Cut { part, pause } => {
                if let Some(p) = part.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                // Let the partial body reach the socket before failing it.
                if let Some(sleep) = pause.as_mut() {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "body cut by fault",
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, OutBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            OutBody::Full(None) => SizeHint::with_exact(0),
            OutBody::Cut { .. } => SizeHint::default(),
        }
    }
}

/// Per-connection control: a duplicate of the socket for `SO_LINGER`, and a
/// signal that drops the connection.
struct ConnCtl {
    sock: std::net::TcpStream,
    kill: Notify,
}

impl ConnCtl {
    /// Arms a TCP reset and drops the connection.
    fn reset(&self) {
        let _ = socket2::SockRef::from(&self.sock).set_linger(Some(Duration::ZERO));
        self.kill.notify_one();
    }
}

/// Serves until `shutdown` fires (or its sender is dropped).
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut listener = match TcpListener::from_std(listener) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(error = %e, "consul-standin: cannot use listener");
            return;
        }
    };
    let mut down_rx = shared.down.subscribe();
    let mut conns = JoinSet::new();
    loop {
        let state = *down_rx.borrow_and_update();
        if state.down && listener.is_some() {
            listener = None;
            conns.abort_all();
            tracing::info!("consul-standin: listener down");
        } else if !state.down && listener.is_none() {
            match TcpListener::bind(shared.addr).await {
                Ok(l) => {
                    tracing::info!(address = %shared.addr, "consul-standin: listener up");
                    listener = Some(l);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consul-standin: rebinding failed, retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let recover = async {
            match state.until {
                Some(t) if state.down => tokio::time::sleep_until(t.into()).await,
                _ => std::future::pending().await,
            }
        };
        let accept = async {
            match &listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = down_rx.changed() => {}
            () = recover => {
                shared.down.send_replace(crate::world::DownState { down: false, until: None });
            }
            accepted = accept => match accepted {
                Ok((stream, _peer)) => {
                    if let Some(conn) = prepare(stream) {
                        conns.spawn(connection(conn.0, conn.1, shared.clone()));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consul-standin: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn prepare(stream: TcpStream) -> Option<(TcpStream, Arc<ConnCtl>)> {
    let std = stream.into_std().ok()?;
    let dup = std.try_clone().ok()?;
    let stream = TcpStream::from_std(std).ok()?;
    let _ = stream.set_nodelay(true);
    Some((
        stream,
        Arc::new(ConnCtl {
            sock: dup,
            kill: Notify::new(),
        }),
    ))
}

async fn connection(stream: TcpStream, ctl: Arc<ConnCtl>, shared: Arc<Shared>) {
    let svc_ctl = ctl.clone();
    let service =
        hyper::service::service_fn(move |req| handle(shared.clone(), svc_ctl.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .title_case_headers(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        res = conn => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "consul-standin: connection ended");
            }
        }
        () = ctl.kill.notified() => {
            tracing::debug!("consul-standin: connection reset by fault");
        }
    }
}

/// The token a request carries, from wherever Consul looks (for the log).
pub(crate) fn request_token(query: &query::Query, headers: &hyper::HeaderMap) -> Option<String> {
    let q = query.get("token");
    if !q.is_empty() {
        return Some(q.to_owned());
    }
    if let Some(v) = headers
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
    {
        return Some(v.to_owned());
    }
    headers
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

async fn handle(
    shared: Arc<Shared>,
    ctl: Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Result<Response<OutBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let raw_path = parts.uri.path().to_owned();
    let raw_query = parts.uri.query().unwrap_or("").to_owned();
    let body = match http_body_util::Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(finish(
                Reply::text(400, "Request body too large or unreadable"),
                None,
            ))
        }
    };
    let Ok(path) = query::decode_path(&raw_path) else {
        return Ok(finish(Reply::text(400, "Invalid URL path"), None));
    };
    if path == "/_standin" || path.starts_with("/_standin/") {
        return Ok(finish(
            admin_routes::handle(&shared, parts.method.as_str(), &path, &body),
            None,
        ));
    }
    let parsed = query::Query::parse(&raw_query).unwrap_or_default();
    shared.record(
        parts.method.as_str(),
        &path,
        &raw_query,
        request_token(&parsed, &parts.headers),
    );
    let fault = shared.lock().faults.take(&path);
    match &fault {
        Some(FaultKind::Status { code, body }) => {
            return Ok(finish(Reply::text(*code, body.clone()), None))
        }
        Some(FaultKind::RateLimit) => {
            return Ok(finish(
                Reply::text(429, "rate limit exceeded, try again later"),
                None,
            ));
        }
        Some(FaultKind::Hang) => std::future::pending::<()>().await,
        Some(FaultKind::Reset) => {
            ctl.reset();
            std::future::pending::<()>().await;
        }
        Some(FaultKind::Delay { ms }) => tokio::time::sleep(Duration::from_millis(*ms)).await,
        _ => {}
    }
    let reply = api::dispatch(
        &shared,
        &parts.method,
        &path,
        &raw_query,
        &parts.headers,
        &body,
    )
    .await;
    Ok(finish(reply, fault.as_ref()))
}

/// Frames a reply, applying body faults.
fn finish(mut reply: Reply, fault: Option<&FaultKind>) -> Response<OutBody> {
    let full_len = reply.body.len();
    let body = match fault {
        Some(FaultKind::CutBody { after_bytes }) => {
            let keep = after_bytes
                .unwrap_or(full_len / 2)
                .min(full_len.saturating_sub(1));
            reply.body.truncate(keep);
            OutBody::Cut {
                part: Some(Bytes::from(std::mem::take(&mut reply.body))),
                pause: Some(Box::pin(tokio::time::sleep(Duration::from_millis(20)))),
            }
        }
        Some(FaultKind::MalformedJson) => {
            let mut garbage = b"{\"Malformed\": [".to_vec();
            garbage.extend_from_slice(&reply.body);
            garbage.extend_from_slice(b",,}");
            OutBody::Full(Some(Bytes::from(garbage)))
        }
        _ => OutBody::Full(Some(Bytes::from(std::mem::take(&mut reply.body)))),
    };
    let mut builder = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        builder = builder.header(*k, v.as_str());
    }
    if let OutBody::Cut { .. } = body {
        builder = builder.header("Content-Length", full_len.to_string());
    }
    builder.body(body).unwrap_or_else(|_| {
        let mut r = Response::new(OutBody::Full(None));
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}
