//! The dashboard (`web`): server-rendered pages for the teams who drop manifests, served on its
//! own TCP listener by the same bounded server as the admin socket ([`crate::http_server`]).
//!
//! Pages ([`pages`]): the overview (the service's state, throughput now and over the last hour,
//! requests against the rate limit, in flight, queued, done and failed today, in doubt, the
//! active manifests with progress bars and ETA, a chart of images per minute), a manifest's
//! jobs (state, failure code and Claid's message, a thumbnail of the output, the input, the
//! task or batch id, the API requests it took; filters by state; the reports), the rejected
//! files with their problems, and the last failures grouped by code. They work without
//! JavaScript; `/static/live.js` refreshes the overview's figures every two seconds.
//!
//! Who may look ([`auth`]): everyone on a loopback listener without a users or token file;
//! otherwise a session from the login form, HTTP Basic, or a bearer token. Actions
//! ([`actions`]: retry a run's failed jobs, release its jobs held in doubt, re-run a rejected
//! file) need `allow_actions: true`, an authenticated user and a CSRF token, and each writes an
//! audit line to the log. Every file served ([`files`]) comes from inside the outbox.
//!
//! Every response carries a Content-Security-Policy that allows only the dashboard's own
//! script and stylesheet, so even a name that slipped past escaping could not run a script.

pub mod actions;
pub mod auth;
pub mod files;
pub mod pages;
pub mod users;
pub mod views;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::info;

use crate::config::web::WebConfig;
use crate::os_error::OsCause;
use crate::{activity, http_server, pipeline};

/// Most connections the dashboard serves at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send a request's headers (also the idle keep-alive timeout).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's body may take.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body (a login or action form is a few hundred bytes).
pub const MAX_REQUEST_BODY: usize = 16 * 1024;
const BOUNDS: http_server::Bounds = http_server::Bounds {
    name: "dashboard",
    max_connections: MAX_CONNECTIONS,
    header_timeout: HEADER_TIMEOUT,
    body_timeout: BODY_TIMEOUT,
    max_body: MAX_REQUEST_BODY,
    // How long shutdown waits for requests in progress (idle connections close at once).
    drain: Duration::from_secs(5),
};
/// Allows the dashboard's own script and stylesheet and images; nothing inline, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Errors that stop the dashboard from starting (and so the daemon).
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot listen for the dashboard on {addr}: {}", OsCause(cause))]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Users(#[from] users::UsersError),
    #[error(transparent)]
    Token(#[from] auth::TokenError),
}

/// What the dashboard needs from the daemon.
pub struct Deps {
    pub config: WebConfig,
    pub pipeline: pipeline::Handle,
    pub activity: activity::Handle,
    pub inbox: PathBuf,
    pub outbox: PathBuf,
    pub rejected: PathBuf,
    pub state: PathBuf,
}

/// Shared by every request.
#[derive(Clone)]
pub struct WebState {
    inner: Arc<Inner>,
}

pub struct Inner {
    pub config: WebConfig,
    pub pipeline: pipeline::Handle,
    pub activity: activity::Handle,
    pub inbox: PathBuf,
    pub outbox: PathBuf,
    pub rejected: PathBuf,
    pub auth: auth::Auth,
    pub thumbs: files::Thumbnails,
}

impl std::ops::Deref for WebState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl WebState {
    /// Whether this caller is offered actions.
    pub fn may_act(&self, principal: &auth::Principal) -> bool {
        self.config.allow_actions && principal.is_authenticated()
    }
}

/// Reads the users and token files, binds the listener and starts serving until `cancel`.
/// Returns the address it listens on.
pub async fn start(
    deps: Deps,
    cancel: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), WebError> {
    let auth = auth::Auth::new(&deps.config)?;
    let listener = tokio::net::TcpListener::bind(deps.config.listen)
        .await
        .map_err(|cause| WebError::Bind {
            addr: deps.config.listen,
            cause,
        })?;
    let addr = listener.local_addr().map_err(|cause| WebError::Bind {
        addr: deps.config.listen,
        cause,
    })?;
    let thumbs = files::Thumbnails::new(deps.outbox.clone(), &deps.state);
    info!(
        addr = %addr,
        authentication = if auth.required() { "required" } else { "none (loopback)" },
        actions = deps.config.allow_actions,
        "Dashboard listening"
    );
    let state = WebState {
        inner: Arc::new(Inner {
            config: deps.config,
            pipeline: deps.pipeline,
            activity: deps.activity,
            inbox: deps.inbox,
            outbox: deps.outbox,
            rejected: deps.rejected,
            auth,
            thumbs,
        }),
    };
    let prune = state.thumbs.clone();
    let prune_cancel = cancel.clone();
    tokio::spawn(async move {
        let mut daily = tokio::time::interval(Duration::from_secs(24 * 3600));
        daily.tick().await;
        loop {
            tokio::select! {
                _ = prune_cancel.cancelled() => break,
                _ = daily.tick() => {
                    let thumbs = prune.clone();
                    let _ = tokio::task::spawn_blocking(move || thumbs.prune()).await;
                }
            }
        }
    });
    let app = router(state);
    let handler = move |req: Request<Incoming>| handle(app.clone(), req);
    let task = tokio::spawn(http_server::serve(listener, BOUNDS, handler, cancel));
    Ok((addr, task))
}

/// Reads the request body (bounded in time and size), then routes the request.
async fn handle(app: Router, req: Request<Incoming>) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match http_server::read_body(body, &BOUNDS).await {
        Ok(bytes) => bytes,
        Err(err) => return err.response(),
    };
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
    match app.oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Every route; all but the login form and the static files need a caller the dashboard lets in.
pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/partial/overview", get(pages::overview_partial))
        .route("/manifests/{id}", get(pages::manifest))
        .route("/manifests/{id}/retry-failed", post(actions::retry_failed))
        .route(
            "/manifests/{id}/release-in-doubt",
            post(actions::release_in_doubt),
        )
        .route("/rejected", get(pages::rejected))
        .route("/rejected/rerun", post(actions::rerun_rejected))
        .route("/failures", get(pages::failures))
        .route("/thumb/{*path}", get(pages::thumbnail))
        .route("/file/{*path}", get(pages::output_file))
        .route("/report/{*path}", get(pages::report))
        .route("/logout", post(pages::logout))
        .fallback(pages::not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_caller,
        ))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/static/style.css", get(style_css))
        .route("/static/live.js", get(live_js))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// Lets in callers [`auth::Auth`] knows (and everyone when no authentication is configured);
/// a browser without a session goes to the login form, a script gets 401.
async fn require_caller(State(state): State<WebState>, mut req: Request, next: Next) -> Response {
    // Without a login, a page from another site could read the dashboard through a host name
    // it points at 127.0.0.1 (DNS rebinding): only the loopback names, and the host of
    // `web.public_url`, are answered.
    if !state.auth.required() && !host_allowed(&req, state.config.public_url.as_deref()) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "This dashboard has no login, so it answers only to a loopback address (http://127.0.0.1:PORT/, http://localhost:PORT/) or the host of web.public_url; configure web.users_file or web.token_file to open it under other names.\n",
        )
            .into_response();
    }
    match state.auth.authenticate(req.headers()).await {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(auth::Denied::Throttled) => (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed attempts for this user; wait a few minutes.\n",
        )
            .into_response(),
        Err(_) => {
            let browser = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/html"));
            if browser && req.method() == Method::GET && state.auth.has_users() {
                let next = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "/".to_owned());
                let target = format!("/login?next={}", files::encode_path(&next));
                return Redirect::to(&target).into_response();
            }
            let challenge = if state.auth.has_users() {
                "Basic realm=\"claid-hotfolder\", charset=\"UTF-8\""
            } else {
                "Bearer realm=\"claid-hotfolder\""
            };
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, challenge)],
                "Log in: a session from /login, HTTP Basic, or a bearer token.\n",
            )
                .into_response()
        }
    }
}

/// Whether the request's `Host` is a loopback name or address, or the host of `public_url`
/// (a request without one, HTTP/1.0, is let in: a browser always sends it).
fn host_allowed(req: &Request, public_url: Option<&str>) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().host())
    else {
        return true;
    };
    let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.');
    let lower = name.to_ascii_lowercase();
    // `localhost` and its subdomains name loopback (RFC 6761).
    if lower == "localhost"
        || lower.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    {
        return true;
    }
    public_url
        .and_then(|url| reqwest::Url::parse(url).ok())
        .and_then(|url| url.host_str().map(str::to_owned))
        .is_some_and(|public| {
            public
                .trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(name)
        })
}

/// The headers every response carries.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let headers = res.headers_mut();
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

async fn style_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("web/static/style.css"),
    )
        .into_response()
}

async fn live_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("web/static/live.js"),
    )
        .into_response()
}
