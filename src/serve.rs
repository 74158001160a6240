//! The bounded HTTP/1 server behind every listener of the daemon (the admin socket, the metrics
//! port, the dashboard): an accept loop that serves at most [`Bounds::max_connections`]
//! connections at once (more are answered `503` and closed at once, so idle clients can hold at
//! most that many file descriptors and the kernel's accept queue is drained, not left full), a
//! header-read timeout that is also the keep-alive idle timeout, and a request body read within a
//! time and size bound before the router sees it. On cancellation idle connections close at once
//! and requests in progress finish (up to [`DRAIN`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::os_error::OsCause;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// What the logs call the server (`admin`, `dashboard`).
    pub name: &'static str,
    /// Most connections served at once.
    pub max_connections: usize,
    /// How long a client has to send a request's headers: from the connection, and again from
    /// the end of each response while a kept-alive connection sits idle.
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive once its headers are in.
    pub body_timeout: Duration,
    /// Largest request body read.
    pub max_body: usize,
    /// The whole raw answer to a connection over the cap (a `503` with `connection: close`).
    pub busy: &'static [u8],
}

/// How long shutdown waits for requests in progress (idle connections close at once).
pub const DRAIN: Duration = Duration::from_secs(5);
/// How often, at most, the cap and accept failures are logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

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

/// Accepts and serves HTTP/1 connections until `cancel`, within `bounds`; then lets requests in
/// progress finish (up to [`DRAIN`]).
pub async fn serve_bounded(
    mut listener: impl Accept,
    app: Router,
    bounds: Bounds,
    cancel: CancellationToken,
) {
    // One permit per connection served; dropping the connection's task frees it.
    let permits = Arc::new(Semaphore::new(bounds.max_connections));
    let connections = TaskTracker::new();
    let mut last_busy_log: Option<Instant> = None;
    let mut last_accept_log: Option<Instant> = None;
    let logs_now = |last: &mut Option<Instant>| {
        let due = last.is_none_or(|at| at.elapsed() >= LOG_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    };
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
                if logs_now(&mut last_accept_log) {
                    warn!(server = bounds.name, error = %OsCause(&err), "Cannot accept a connection; retrying");
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if logs_now(&mut last_busy_log) {
                warn!(
                    server = bounds.name,
                    max_connections = bounds.max_connections,
                    "Too many connections at once; answering 503 to new ones"
                );
            }
            refuse(io, bounds.busy).await;
            continue;
        };
        let (app, cancel) = (app.clone(), cancel.clone());
        connections.spawn(async move {
            serve_connection(io, app, bounds, cancel).await;
            drop(permit);
        });
    }
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait())
        .await
        .is_err()
    {
        warn!(
            server = bounds.name,
            "Requests still in progress at shutdown were dropped"
        );
    }
}

/// Answers a connection over the cap with `busy` and closes it. Inline in the accept loop and
/// bounded, so refused connections never pile up as open descriptors.
async fn refuse(mut io: impl AsyncWrite + Unpin, busy: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_millis(50), io.write_all(busy)).await;
}

/// One HTTP/1 connection: header-read (and idle) timeout, then each request's body read within
/// the body timeout before the router sees it. On `cancel` an idle connection closes at once
/// and a request in progress finishes.
async fn serve_connection(
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    app: Router,
    bounds: Bounds,
    cancel: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(app, req, bounds).await) }
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

/// Reads the request body (bounded in time and size), then routes the request.
async fn handle(app: Router, req: Request<Incoming>, bounds: Bounds) -> Response {
    let (parts, body) = req.into_parts();
    let read = Limited::new(body, bounds.max_body).collect();
    let bytes = match tokio::time::timeout(bounds.body_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) if err.is::<LengthLimitError>() => {
            return error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        Ok(Err(_)) => return error_response(StatusCode::BAD_REQUEST, "broken request body"),
        Err(_) => {
            return error_response(StatusCode::REQUEST_TIMEOUT, "request body not sent in time");
        }
    };
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
    match app.oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn error_response(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({"error": message}))).into_response()
}
