//! The bounded HTTP/1 server under the admin API ([`crate::admin`]) and the webhook receiver
//! ([`crate::webhook`]): an accept loop with a connection cap, a header-read (and keep-alive
//! idle) timeout per connection, a bounded body read, and a drain at shutdown.
//!
//! Bounded so that no number of idle, slow or greedy clients can exhaust the daemon's file
//! descriptors or memory: at most [`Bounds::max_connections`] connections per listener are
//! served at once (at the cap, the connection idle the longest is closed to make room, at once
//! when it never sent a whole request, but never before it has had [`QUIET_BEFORE_EVICT`] to
//! be read; when every one has a request in progress, or the
//! connections on their way to their places have not settled within [`SETTLE_WAIT`], more are
//! answered `503` and closed at once, which also drains the kernel's accept queue), a client
//! has [`Bounds::header_timeout`] to send a request's headers (from the connection, and again
//! while a kept-alive connection sits idle), and a handler reads a body
//! with [`read_body`]: at most [`Bounds::max_body`] bytes within [`Bounds::body_timeout`].
//! An answer the client does not take ([`WRITE_TIMEOUT`] without a byte going out: a client
//! that sends requests and never reads) ends its connection, and a connection evicted for a
//! newcomer is given [`EVICTED_GRACE`] to finish, so clients that do not read cannot hold the
//! places either.

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
    let idle = Arc::new(Connections::default());
    // Places for newcomers waiting for the place of a connection evicted for them (as many as
    // there are places).
    let waiting_room = Arc::new(Semaphore::new(bounds.max_connections));
    // When "too many connections" was last logged (by the accept loop or a newcomer that
    // waited for an evicted place in vain): at most once a minute.
    let last_busy_log = Arc::new(std::sync::Mutex::new(None::<Instant>));
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
        let permit = permits.clone().try_acquire_owned().ok();
        let (handler, cancel_conn, registry) = (handler.clone(), cancel.clone(), idle.clone());
        let (busy_evicted, refused_evicted) = (busy.clone(), refused.clone());
        let serve = move |permit: tokio::sync::OwnedSemaphorePermit, io| async move {
            let slot = registry.add();
            // Given back when the connection ends, also when its task unwinds from a panic (a
            // slot left behind looked idle for ever, and every newcomer over the cap evicted it
            // in vain or waited for it to settle).
            let seat = Seat {
                registry,
                slot: slot.clone(),
                permit: Some(permit),
            };
            let ended = serve_connection(io, bounds, handler, cancel_conn, slot).await;
            drop(seat);
            // Evicted before it sent a whole request: told it is over the cap, as a newcomer
            // past the places is, after its place was handed on.
            if let Some(io) = ended {
                refused_evicted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                refuse(io, &busy_evicted).await;
            }
        };
        if let Some(permit) = permit {
            connections.spawn(serve(permit, io));
            continue;
        }
        // At the cap, the connection idle the longest (no request in progress: waiting for
        // its first headers or kept alive) makes room: idle clients can hold every place
        // only until someone else needs one, so `/healthz` is answered (or, past the waiting
        // places too, told 503 at once: never left unanswered in the accept queue). The newcomer
        // waits for that place in a task of its own (at most as many at once as there are
        // places): waiting here, each of 300 clients trickling headers cost the accept loop
        // a fifth of a second, and a probe behind them went unanswered for 20 s.
        // A connection is not evicted before it has had its chance to be read
        // ([`Slot::ripe_at`]): among clients that reconnect as soon as they are closed, each
        // newcomer evicted the one placed just before it, and a probe placed among them was
        // closed before its task read the request it had sent (or was refused, every place
        // closing). When nothing can be taken now but connections are on their way (evicted
        // ones closing, newcomers waiting in the room for their places, new ones soon
        // evictable), the loop waits for them to settle (at most [`SETTLE_WAIT`]) instead of
        // refusing: the newcomer is the next in line either way. When every place has a
        // request in progress, nothing is on its way: refused at once.
        let settle_by = Instant::now() + SETTLE_WAIT;
        let place = loop {
            // Registered before looking, so that a change made meanwhile is not missed.
            let changed = idle.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Ok(permit) = permits.clone().try_acquire_owned() {
                break Some(Ok(permit));
            }
            // One time for both looks: a connection that ripens between them is not missed.
            let now = Instant::now();
            if let Ok(room) = waiting_room.clone().try_acquire_owned()
                && let Some(place) = idle.evict_oldest(now)
            {
                break Some(Err((room, place)));
            }
            let ripens = idle.next_ripe(now);
            let on_the_way = ripens.is_some()
                || idle.closing()
                || waiting_room.available_permits() < bounds.max_connections;
            if !on_the_way || now >= settle_by {
                break None;
            }
            // Woken when one ripens too: nothing tells the loop of that.
            let wake = ripens.map_or(settle_by, |at| at.min(settle_by));
            tokio::select! {
                _ = cancel.cancelled() => break None,
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        };
        match place {
            Some(Ok(permit)) => {
                connections.spawn(serve(permit, io));
                continue;
            }
            Some(Err((room, place))) => {
                let (refused, busy, last_busy_log, changed) = (
                    refused.clone(),
                    busy.clone(),
                    last_busy_log.clone(),
                    idle.changed.clone(),
                );
                connections.spawn(async move {
                    let permit = tokio::time::timeout(EVICT_WAIT, place)
                        .await
                        .ok()
                        .and_then(Result::ok);
                    drop(room);
                    changed.notify_waiters();
                    match permit {
                        Some(permit) => serve(permit, io).await,
                        None => refuse_over_cap(io, &bounds, &refused, &busy, &last_busy_log).await,
                    }
                });
                continue;
            }
            None if cancel.is_cancelled() => break,
            None => {}
        }
        refuse_over_cap(io, &bounds, &refused, &busy, &last_busy_log).await;
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

/// How long the accept loop waits, at most, for connections on their way to settle before it
/// refuses a newcomer (see the loop).
const SETTLE_WAIT: Duration = Duration::from_millis(250);
/// How long a new connection waits for the place of an idle one it evicted.
const EVICT_WAIT: Duration = Duration::from_millis(500);
/// How long a connection must have waited on its client before it may be evicted.
const QUIET_BEFORE_EVICT: Duration = Duration::from_millis(50);
/// How long after it was accepted (or its last request ended) a connection may be evicted
/// whether or not its task got to read it.
const NEW_BEFORE_EVICT: Duration = Duration::from_millis(500);
/// How long an evicted connection may take to finish what it is doing (an answer the client
/// does not read kept it, and its place, for as long as the client liked).
const EVICTED_GRACE: Duration = Duration::from_millis(100);
/// How long a write may wait for the client to take bytes before the connection is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's stream whose writes fail with `TimedOut` once one has waited
/// [`WRITE_TIMEOUT`] for the client to take a byte (hyper has a timeout for reading headers,
/// none for writing).
/// Its reads also tell the connection's [`Slot`] when it waits on its client.
struct WriteTimeout<T> {
    inner: T,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    slot: Arc<Slot>,
}

impl<T> WriteTimeout<T> {
    fn new(inner: T, slot: Arc<Slot>) -> WriteTimeout<T> {
        WriteTimeout {
            inner,
            stalled: None,
            slot,
        }
    }

    /// `Pending` from the inner write: starts (or checks) the stall's clock.
    fn pending<R>(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<R>> {
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
        match stalled.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took no byte of the answer in time",
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn progressed<R>(
        &mut self,
        ready: std::task::Poll<std::io::Result<R>>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<R>> {
        match ready {
            std::task::Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let read = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if read.is_pending() {
            self.slot.waits_on_client();
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let ready = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(ready, cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let ready = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(ready, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let ready = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(ready, cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connections one server serves, to find the one idle the longest when a new one needs
/// its place.
#[derive(Debug, Default)]
struct Connections {
    slots: std::sync::Mutex<Vec<Arc<Slot>>>,
    /// Told whenever a place may have come free or a connection become evictable: one taken
    /// (a newcomer in its place), given back, or a request ended; and a waiting-room place
    /// given back. The accept loop waits on it while connections are on their way.
    changed: Arc<tokio::sync::Notify>,
}

/// One served connection: requests in progress on it, and how to close it.
#[derive(Debug)]
struct Slot {
    in_request: std::sync::atomic::AtomicUsize,
    /// Whether a request ever began on it: one that never sent a whole request's headers has
    /// no answer going out; evicted, it closes at once and is told `503`.
    served: std::sync::atomic::AtomicBool,
    /// Since when it has been idle (no request in progress), or was accepted.
    idle_since: std::sync::Mutex<Instant>,
    /// Since when it has waited on its client for the next request: its reads found nothing
    /// more to read since it was accepted or its last request ended. `None` until then.
    waiting_since: std::sync::Mutex<Option<Instant>>,
    evict: CancellationToken,
    /// [`Connections::changed`], told when a request on it ends.
    changed: Arc<tokio::sync::Notify>,
    /// Evicted: the newcomer its place goes to, once it has closed. Handed on directly, not
    /// through the semaphore, where a newcomer whose task had not asked for the place yet lost
    /// it to another (and was refused after its wait, every place held by a quiet client).
    heir: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<tokio::sync::OwnedSemaphorePermit>>>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Slot>>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn add(&self) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            in_request: std::sync::atomic::AtomicUsize::new(0),
            served: std::sync::atomic::AtomicBool::new(false),
            idle_since: std::sync::Mutex::new(Instant::now()),
            waiting_since: std::sync::Mutex::new(None),
            evict: CancellationToken::new(),
            changed: self.changed.clone(),
            heir: std::sync::Mutex::new(None),
        });
        self.lock().push(slot.clone());
        self.changed.notify_waiters();
        slot
    }

    fn remove(&self, slot: &Arc<Slot>) {
        self.lock().retain(|other| !Arc::ptr_eq(other, slot));
    }

    /// Whether an evicted connection is still closing (its place about to come free).
    fn closing(&self) -> bool {
        self.lock().iter().any(|slot| slot.evict.is_cancelled())
    }

    /// Idle (no request in progress) and not closing already.
    fn idle(slot: &Slot) -> bool {
        slot.in_request.load(std::sync::atomic::Ordering::SeqCst) == 0 && !slot.evict.is_cancelled()
    }

    fn evictable(slot: &Slot, now: Instant) -> bool {
        Self::idle(slot) && slot.ripe_at() <= now
    }

    /// When the next idle connection that may not be evicted yet may be.
    fn next_ripe(&self, now: Instant) -> Option<Instant> {
        self.lock()
            .iter()
            .filter(|slot| Self::idle(slot))
            .map(|slot| slot.ripe_at())
            .filter(|at| *at > now)
            .min()
    }

    /// Closes the connection idle the longest that may be evicted ([`Slot::ripe_at`]) and is
    /// not closing already; its place, once it has closed, comes through the receiver. `None`
    /// when every connection has a request in progress, is closing already, or is too new.
    fn evict_oldest(
        &self,
        now: Instant,
    ) -> Option<tokio::sync::oneshot::Receiver<tokio::sync::OwnedSemaphorePermit>> {
        let slots = self.lock();
        let oldest = slots
            .iter()
            .filter(|slot| Self::evictable(slot, now))
            .min_by_key(|slot| {
                *slot
                    .idle_since
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            });
        let slot = oldest?;
        let (heir, place) = tokio::sync::oneshot::channel();
        *slot
            .heir
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(heir);
        slot.evict.cancel();
        Some(place)
    }
}

impl Slot {
    /// From when it may be evicted: once it has waited on its client for [`QUIET_BEFORE_EVICT`]
    /// (a client that sent its whole request at once is read before then, even on a busy
    /// machine), or [`NEW_BEFORE_EVICT`] after it was accepted or its last request ended (its
    /// task never got to read it).
    fn ripe_at(&self) -> Instant {
        let idle_since = *self
            .idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let waiting_since = *self
            .waiting_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let new = idle_since + NEW_BEFORE_EVICT;
        waiting_since.map_or(new, |since| new.min(since + QUIET_BEFORE_EVICT))
    }

    /// A request began or ended on it: it does not wait on its client until a read finds
    /// nothing more to read again.
    fn stops_waiting(&self) {
        *self
            .waiting_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// A read found nothing more to read: from now (unless already), it waits on its client.
    /// The accept loop is told: the connection may be evicted sooner than it planned.
    fn waits_on_client(&self) {
        let mut waiting = self
            .waiting_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if waiting.is_none() {
            *waiting = Some(Instant::now());
            drop(waiting);
            self.changed.notify_waiters();
        }
    }
}

/// A served connection's place: when it drops, the slot leaves the registry and the place
/// goes to the newcomer that evicted the connection (back to the semaphore when there is none,
/// or it has given up waiting), and the accept loop is told.
struct Seat {
    registry: Arc<Connections>,
    slot: Arc<Slot>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.registry.remove(&self.slot);
        let heir = self
            .slot
            .heir
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        // Without an heir the permit is dropped here, back to the semaphore; refused (the
        // newcomer gave up waiting), it comes back from `send` and is dropped too.
        if let (Some(heir), Some(permit)) = (heir, self.permit.take()) {
            let _ = heir.send(permit);
        }
        self.registry.changed.notify_waiters();
    }
}

/// A request in progress on a connection, while it lives.
struct InRequest(Arc<Slot>);

impl InRequest {
    fn start(slot: &Arc<Slot>) -> InRequest {
        slot.in_request
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        slot.served.store(true, std::sync::atomic::Ordering::SeqCst);
        slot.stops_waiting();
        InRequest(slot.clone())
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        *self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        // A read of its body does not count: it waits for the next request from now on.
        self.0.stops_waiting();
        self.0
            .in_request
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.changed.notify_waiters();
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
fn busy_log_due(last: &std::sync::Mutex<Option<Instant>>) -> bool {
    log_due(
        &mut last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

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

/// Refuses a newcomer over the cap (no place came free for it): counted, told (a WARN once a
/// minute at most) and answered `busy`.
async fn refuse_over_cap(
    io: impl AsyncWrite + Unpin,
    bounds: &Bounds,
    refused: &std::sync::atomic::AtomicU64,
    busy: &[u8],
    last_busy_log: &std::sync::Mutex<Option<Instant>>,
) {
    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if busy_log_due(last_busy_log) {
        warn!(
            server = bounds.name,
            max_connections = bounds.max_connections,
            "Too many connections at once; answering 503 to new ones"
        );
    }
    refuse(io, busy).await;
}

/// Answers a connection over the cap (or evicted before a whole request came) with `busy` and
/// closes it. Bounded, so refused connections never pile up as open descriptors.
async fn refuse(mut io: impl AsyncWrite + Unpin, busy: &[u8]) {
    let _ = tokio::time::timeout(REFUSE_WRITE, io.write_all(busy)).await;
}

/// One HTTP/1 connection with the header-read (and idle) timeout. On `cancel` an idle
/// connection closes at once and a request in progress finishes. Returns the connection's
/// stream when it was evicted before a whole request came (to be told `503`).
async fn serve_connection<H, F, I>(
    io: I,
    bounds: Bounds,
    handler: H,
    cancel: CancellationToken,
    slot: Arc<Slot>,
) -> Option<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let in_service = slot.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let busy = InRequest::start(&in_service);
        let response = handler(req);
        async move {
            let response = response.await;
            drop(busy);
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_timeout)
        .keep_alive(true);
    let mut conn =
        builder.serve_connection(TokioIo::new(WriteTimeout::new(io, slot.clone())), service);
    let res = tokio::select! {
        res = &mut conn => res,
        _ = cancel.cancelled() => {
            std::pin::Pin::new(&mut conn).graceful_shutdown();
            conn.await
        }
        _ = slot.evict.cancelled() => {
            // Idle, and its place wanted: closes at once. One that never sent a whole
            // request (a slow client trickling headers) hands its place on there and then,
            // and is told 503: a graceful shutdown waited the whole grace for its headers, so
            // clients that reconnect as soon as they are closed kept every place and the
            // waiting room busy, and probes of `/healthz` were refused. On one that was
            // served, a request that began meanwhile, or an answer going out, gets a moment
            // to finish (a client that does not read its answer does not keep the place).
            if !slot.served.load(std::sync::atomic::Ordering::SeqCst) {
                return Some(conn.into_parts().io.into_inner().inner);
            }
            std::pin::Pin::new(&mut conn).graceful_shutdown();
            match tokio::time::timeout(EVICTED_GRACE, conn).await {
                Ok(res) => res,
                Err(_) => return None,
            }
        }
    };
    if let Err(err) = res {
        // Timeouts and clients that go away are routine.
        debug!(server = bounds.name, error = %err, "Connection ended with an error");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_may_be_evicted_only_once_it_has_waited_on_its_client_or_aged() {
        let connections = Connections::default();
        let slot = connections.add();
        let accepted = *slot.idle_since.lock().unwrap();
        // Its task has not read it yet: safe until it is old.
        assert_eq!(slot.ripe_at(), accepted + NEW_BEFORE_EVICT);
        assert!(connections.evict_oldest(Instant::now()).is_none());
        assert_eq!(
            connections.next_ripe(Instant::now()),
            Some(accepted + NEW_BEFORE_EVICT)
        );
        // Its read found nothing more: safe only for a moment more.
        slot.waits_on_client();
        let waiting = slot.waiting_since.lock().unwrap().expect("waiting");
        assert_eq!(slot.ripe_at(), waiting + QUIET_BEFORE_EVICT);
        assert!(Connections::evictable(&slot, waiting + QUIET_BEFORE_EVICT));
        // A request on it: not idle, so never evicted; once it ends, it waits anew.
        let request = InRequest::start(&slot);
        assert!(slot.waiting_since.lock().unwrap().is_none());
        assert!(!Connections::evictable(
            &slot,
            waiting + NEW_BEFORE_EVICT * 10
        ));
        drop(request);
        let ended = *slot.idle_since.lock().unwrap();
        assert_eq!(slot.ripe_at(), ended + NEW_BEFORE_EVICT);
    }

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
