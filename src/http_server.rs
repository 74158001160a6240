//! The bounded HTTP/1 server under the admin API ([`crate::admin`]) and the webhook receiver
//! ([`crate::webhook`]): an accept loop with a connection cap, a header-read (and keep-alive
//! idle) timeout per connection, a bounded body read, and a drain at shutdown.
//!
//! Bounded so that no number of idle, slow or greedy clients can exhaust the daemon's file
//! descriptors or memory: at most [`Bounds::max_connections`] connections per listener are
//! served at once (more are answered `503` and closed at once, which also drains the kernel's
//! accept queue), a client has [`Bounds::header_timeout`] to send a request's headers (from the
//! connection, and again while a kept-alive connection sits idle), and a handler reads a body
//! with [`read_body`]: at most [`Bounds::max_body`] bytes within [`Bounds::body_timeout`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::os_error::OsCause;

/// The limits of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Names the server in log lines and in the busy answer (`admin`, `webhook`).
    pub name: &'static str,
    /// Most connections served at once; more are answered `503` and closed at once.
    pub max_connections: usize,
    /// How long a client has to send a request's headers: from the connection, and again from
    /// the end of each response while a kept-alive connection sits idle.
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive once its headers are in.
    pub body_timeout: Duration,
    /// Largest request body read.
    pub max_body: usize,
    /// How long shutdown waits for requests in progress (idle connections close at once).
    pub drain: Duration,
}

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body too large")]
    TooLarge,
    #[error("request body not sent in time")]
    TimedOut,
    #[error("broken request body")]
    Broken,
}

impl BodyError {
    /// The answer to the client: 413, 408 or 400.
    pub fn response(self) -> Response {
        let status = match self {
            BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TimedOut => StatusCode::REQUEST_TIMEOUT,
            BodyError::Broken => StatusCode::BAD_REQUEST,
        };
        error_response(status, &self.to_string())
    }
}

/// A listener the server accepts connections from.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_io(&mut self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_io(&mut self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(io, _)| io)
    }
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_io(&mut self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(io, _)| io)
    }
}

/// How often, at most, the cap and accept failures are logged.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// How long a refused connection is given to take its `503`.
const REFUSE_WRITE: Duration = Duration::from_millis(50);

/// Accepts and serves HTTP/1 connections until `cancel`, within `bounds`; each request goes to
/// `handler`, which reads the body (if it wants it) with [`read_body`]. Then lets requests in
/// progress finish (up to [`Bounds::drain`]).
pub async fn serve<H, F>(
    listener: impl Accept,
    bounds: Bounds,
    handler: H,
    cancel: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    serve_counted(listener, bounds, handler, cancel, Arc::default()).await;
}

/// [`serve`], counting in `refused` the connections answered 503 because
/// [`Bounds::max_connections`] were being served.
pub async fn serve_counted<H, F>(
    mut listener: impl Accept,
    bounds: Bounds,
    handler: H,
    cancel: CancellationToken,
    refused: Arc<std::sync::atomic::AtomicU64>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    // One permit per connection served; dropping the connection's task frees it.
    let permits = Arc::new(Semaphore::new(bounds.max_connections));
    let connections = TaskTracker::new();
    let busy = busy_answer(bounds.name);
    let mut last_busy_log: Option<Instant> = None;
    let mut last_accept_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept_io() => accepted,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(err) => {
                // Out of file descriptors (EMFILE) or the like: the connection stays queued;
                // wait a little rather than spin.
                if log_due(&mut last_accept_log) {
                    warn!(
                        server = bounds.name, error = %OsCause(&err),
                        "Cannot accept a connection; retrying"
                    );
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if log_due(&mut last_busy_log) {
                warn!(
                    server = bounds.name,
                    max_connections = bounds.max_connections,
                    "Too many connections at once; answering 503 to new ones"
                );
            }
            refuse(io, &busy).await;
            continue;
        };
        let (handler, cancel) = (handler.clone(), cancel.clone());
        connections.spawn(async move {
            serve_connection(io, bounds, handler, cancel).await;
            drop(permit);
        });
    }
    connections.close();
    if tokio::time::timeout(bounds.drain, connections.wait())
        .await
        .is_err()
    {
        warn!(
            server = bounds.name,
            "Requests still in progress at shutdown were dropped"
        );
    }
}

/// Reads a request body: at most [`Bounds::max_body`] bytes (a larger `Content-Length` is
/// refused before anything is read) within [`Bounds::body_timeout`].
pub async fn read_body(body: Incoming, bounds: &Bounds) -> Result<Bytes, BodyError> {
    // The size hint of a body with a Content-Length is that length.
    let announced = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
    if announced > bounds.max_body {
        return Err(BodyError::TooLarge);
    }
    let read = Limited::new(body, bounds.max_body).collect();
    match tokio::time::timeout(bounds.body_timeout, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Broken),
        Err(_) => Err(BodyError::TimedOut),
    }
}

/// A JSON answer `{"error": message}`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({"error": message}))).into_response()
}

/// True (and the clock restarted) when a throttled log line is due.
fn log_due(last: &mut Option<Instant>) -> bool {
    let due = last.is_none_or(|at| at.elapsed() >= LOG_EVERY);
    if due {
        *last = Some(Instant::now());
    }
    due
}

/// The whole answer to a connection over the cap.
fn busy_answer(name: &str) -> Bytes {
    let body = serde_json::json!({
        "error": format!("the {name} server is busy; try again in a while")
    })
    .to_string();
    Bytes::from(format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// Answers a connection over the cap with `busy` and closes it. Inline in the accept loop and
/// bounded, so refused connections never pile up as open descriptors.
async fn refuse(mut io: impl AsyncWrite + Unpin, busy: &[u8]) {
    let _ = tokio::time::timeout(REFUSE_WRITE, io.write_all(busy)).await;
}

/// One HTTP/1 connection with the header-read (and idle) timeout. On `cancel` an idle
/// connection closes at once and a request in progress finishes.
async fn serve_connection<H, F>(
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    bounds: Bounds,
    handler: H,
    cancel: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let response = handler(req);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let res = tokio::select! {
        res = conn.as_mut() => res,
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = res {
        // Timeouts and clients that go away are routine.
        debug!(server = bounds.name, error = %err, "Connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_is_one_complete_http_response() {
        let busy = busy_answer("webhook");
        let text = std::str::from_utf8(&busy).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).expect("json body");
        assert_eq!(
            json["error"],
            "the webhook server is busy; try again in a while"
        );
    }
}
