//! Who is asking: a session cookie from the login form (browsers), HTTP Basic against the users
//! file, or a bearer token from `web.token_file` (scripts). When neither file is configured
//! (only allowed on loopback), everyone is `anonymous` and no action is offered.
//!
//! Passwords are argon2id hashes, verified on the blocking pool, at most
//! [`MAX_VERIFYING`] at once; a name with [`MAX_FAILURES`] failed attempts in
//! [`FAILURE_WINDOW`] is refused until the window passes. A verified Basic credential is
//! remembered (as a SHA-256 of name and password) for [`BASIC_CACHE_FOR`], so scripts do not
//! pay a hash per request.
//!
//! Sessions live in memory (a restart logs everyone out): a random 256-bit id in an
//! `HttpOnly; SameSite=Strict` cookie (`Secure` when `web.public_url` is https), ending after
//! [`SESSION_FOR`]. Every POST carries a CSRF token: an HMAC of the session id (or of the Basic
//! user) under a key drawn at start; bearer-token requests need none, since no browser sends
//! that header on its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::web::WebConfig;
use crate::text::Escaped;
use crate::web::users::Users;

/// The session cookie's name.
pub const COOKIE: &str = "claid_session";
/// How long a session lasts from login.
pub const SESSION_FOR: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (the oldest go first).
pub const MAX_SESSIONS: usize = 10_000;
/// Failed password attempts of one name within [`FAILURE_WINDOW`] before it is refused.
pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Argon2 verifications at once (each costs ~19 MiB and tens of milliseconds).
pub const MAX_VERIFYING: usize = 2;
/// How long a verified Basic credential is remembered.
pub const BASIC_CACHE_FOR: Duration = Duration::from_secs(5 * 60);
/// The name audit lines give a bearer-token caller.
pub const TOKEN_USER: &str = "token";

/// Problems reading the token file at start.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "cannot read the dashboard's token file {}: {}",
        crate::text::SecretFilePath(path),
        crate::os_error::OsCause(cause)
    )]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "the dashboard's token file {} holds no token of at least 32 characters; put one on its first line (e.g. `openssl rand -hex 32`)",
        Escaped::path(path)
    )]
    Short { path: PathBuf },
}

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// No authentication configured (loopback only): read-only.
    Open,
    Session {
        id: String,
    },
    Basic,
    Bearer,
}

/// The caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub via: Via,
}

impl Principal {
    /// Whether the caller is a named, authenticated user (actions need one).
    pub fn is_authenticated(&self) -> bool {
        self.via != Via::Open
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credentials at all, or an expired session.
    Missing,
    /// Credentials that do not match.
    Wrong,
    /// Too many failed attempts for this name: try again later.
    Throttled,
}

struct Session {
    user: String,
    expires: Instant,
}

/// The users file as last read, and when to look at it again.
struct UsersCache {
    users: Users,
    /// (modification time, length) of the file when read.
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

/// The authentication state of the dashboard (shared by every request).
pub struct Auth {
    users_file: Option<PathBuf>,
    /// SHA-256 of the bearer token.
    token_digest: Option<[u8; 32]>,
    /// Keys CSRF tokens; drawn at start.
    secret: [u8; 32],
    secure_cookie: bool,
    sessions: Mutex<HashMap<String, Session>>,
    users: Mutex<UsersCache>,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    basic_ok: Mutex<HashMap<[u8; 32], Instant>>,
    verifying: Arc<Semaphore>,
}

impl Auth {
    /// Reads the users and token files (an unreadable or missing one stops the daemon).
    pub fn new(config: &WebConfig) -> Result<Auth, crate::web::WebError> {
        let users = match &config.users_file {
            Some(path) => {
                let users = Users::read(path)?;
                if users.by_name.is_empty() {
                    warn!(users_file = %Escaped::path(path), "The dashboard's users file has no user; add one with `claid-hotfolder web-user add NAME`");
                }
                users
            }
            None => Users::default(),
        };
        let stamp = config.users_file.as_deref().and_then(stamp_of);
        let token_digest = match &config.token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Ok(Auth {
            users_file: config.users_file.clone(),
            token_digest,
            secret,
            secure_cookie: config
                .public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://")),
            sessions: Mutex::new(HashMap::new()),
            users: Mutex::new(UsersCache {
                users,
                stamp,
                checked: Instant::now(),
            }),
            failures: Mutex::new(HashMap::new()),
            basic_ok: Mutex::new(HashMap::new()),
            verifying: Arc::new(Semaphore::new(MAX_VERIFYING)),
        })
    }

    /// Whether anyone must log in.
    pub fn required(&self) -> bool {
        self.users_file.is_some() || self.token_digest.is_some()
    }

    /// Whether the login form is offered (a users file is configured).
    pub fn has_users(&self) -> bool {
        self.users_file.is_some()
    }

    /// Who sends these headers.
    pub async fn authenticate(&self, headers: &axum::http::HeaderMap) -> Result<Principal, Denied> {
        if !self.required() {
            return Ok(Principal {
                user: "anonymous".to_owned(),
                via: Via::Open,
            });
        }
        if let Some(auth) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            if let Some(token) = strip_scheme(auth, "bearer") {
                return match &self.token_digest {
                    Some(expected) if constant_eq(&sha256(token.trim().as_bytes()), expected) => {
                        Ok(Principal {
                            user: TOKEN_USER.to_owned(),
                            via: Via::Bearer,
                        })
                    }
                    _ => Err(Denied::Wrong),
                };
            }
            if let Some(encoded) = strip_scheme(auth, "basic") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                let Some((name, password)) = decoded.as_deref().and_then(|d| d.split_once(':'))
                else {
                    return Err(Denied::Wrong);
                };
                return self.check_basic(name, password).await;
            }
            return Err(Denied::Wrong);
        }
        if let Some(id) = cookie(headers, COOKIE) {
            let mut sessions = self.lock_sessions();
            match sessions.get(id) {
                Some(s) if s.expires > Instant::now() => {
                    return Ok(Principal {
                        user: s.user.clone(),
                        via: Via::Session { id: id.to_owned() },
                    });
                }
                Some(_) => {
                    sessions.remove(id);
                }
                None => {}
            }
        }
        Err(Denied::Missing)
    }

    async fn check_basic(&self, name: &str, password: &str) -> Result<Principal, Denied> {
        let key = sha256(format!("{name}\0{password}").as_bytes());
        // The users file read again first when it changed (which empties the cache): a
        // removed user's or a changed password's cached credentials stop working within two
        // seconds, as documented, not when the cache entry runs out.
        drop(self.users());
        if self.throttled(name) {
            return Err(Denied::Throttled);
        }
        {
            let cache = self.basic_ok.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.get(&key).is_some_and(|until| *until > Instant::now()) {
                return Ok(Principal {
                    user: name.to_owned(),
                    via: Via::Basic,
                });
            }
        }
        if !self.verify(name, password).await? {
            return Err(Denied::Wrong);
        }
        let mut cache = self.basic_ok.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        cache.retain(|_, until| *until > now);
        if cache.len() < MAX_SESSIONS {
            cache.insert(key, now + BASIC_CACHE_FOR);
        }
        Ok(Principal {
            user: name.to_owned(),
            via: Via::Basic,
        })
    }

    /// Checks a password (throttled per name); `Ok(false)` when wrong.
    pub async fn verify(&self, name: &str, password: &str) -> Result<bool, Denied> {
        if self.throttled(name) {
            return Err(Denied::Throttled);
        }
        let users = self.users();
        let Ok(_permit) = self.verifying.clone().acquire_owned().await else {
            return Err(Denied::Wrong);
        };
        let (name_owned, password) = (name.to_owned(), password.to_owned());
        let ok = tokio::task::spawn_blocking(move || users.verify(&name_owned, &password))
            .await
            .unwrap_or(false);
        if !ok {
            let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            failures.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
            let entry = failures.entry(name.to_owned()).or_insert((0, now));
            entry.0 += 1;
            warn!(user = %Escaped::str(name), failures = entry.0, "Dashboard login failed");
        }
        Ok(ok)
    }

    fn throttled(&self, name: &str) -> bool {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        failures
            .get(name)
            .is_some_and(|(n, since)| *n >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW)
    }

    /// Starts a session for `user`; returns its `Set-Cookie` value.
    pub fn login(&self, user: &str) -> String {
        let mut id = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        let id = hex::encode(id);
        let mut sessions = self.lock_sessions();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                user: user.to_owned(),
                expires: now + SESSION_FOR,
            },
        );
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(user);
        info!(user = %Escaped::str(user), "Dashboard login");
        format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            SESSION_FOR.as_secs(),
            if self.secure_cookie { "; Secure" } else { "" }
        )
    }

    /// Ends the caller's session; returns the `Set-Cookie` value that clears the cookie.
    pub fn logout(&self, principal: &Principal) -> String {
        if let Via::Session { id } = &principal.via {
            self.lock_sessions().remove(id);
            info!(user = %Escaped::str(&principal.user), "Dashboard logout");
        }
        format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.secure_cookie { "; Secure" } else { "" }
        )
    }

    /// The CSRF token forms of this caller carry; `None` when its requests need none (bearer)
    /// or it may not post at all (open access).
    pub fn csrf_token(&self, principal: &Principal) -> Option<String> {
        let subject = match &principal.via {
            Via::Session { id } => format!("session:{id}"),
            Via::Basic => format!("basic:{}", principal.user),
            Via::Bearer | Via::Open => return None,
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret)
            .expect("HMAC-SHA256 takes a key of any length");
        mac.update(subject.as_bytes());
        Some(hex::encode(mac.finalize().into_bytes()))
    }

    /// Whether a POST of this caller carries its CSRF token (bearer requests need none).
    pub fn csrf_ok(&self, principal: &Principal, sent: Option<&str>) -> bool {
        match (&principal.via, self.csrf_token(principal)) {
            (Via::Bearer, _) => true,
            (_, Some(expected)) => {
                sent.is_some_and(|s| constant_eq(s.as_bytes(), expected.as_bytes()))
            }
            (_, None) => false,
        }
    }

    /// The users, re-read when the file changed (checked at most every 2 s).
    fn users(&self) -> Users {
        let mut cache = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(path) = &self.users_file
            && cache.checked.elapsed() >= Duration::from_secs(2)
        {
            cache.checked = Instant::now();
            let stamp = stamp_of(path);
            if stamp != cache.stamp {
                match Users::read(path) {
                    Ok(users) => {
                        info!(
                            users = users.by_name.len(),
                            "Re-read the dashboard's users file"
                        );
                        cache.users = users;
                        cache.stamp = stamp;
                        self.basic_ok
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .clear();
                    }
                    Err(err) => {
                        warn!(error = %err, "Cannot re-read the dashboard's users file; the users read before stay")
                    }
                }
            }
        }
        cache.users.clone()
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn stamp_of(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read_token(path: &std::path::Path) -> Result<[u8; 32], TokenError> {
    let text = std::fs::read_to_string(path).map_err(|cause| TokenError::Read {
        path: path.to_owned(),
        cause,
    })?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    if token.chars().count() < 32 {
        return Err(TokenError::Short {
            path: path.to_owned(),
        });
    }
    Ok(sha256(token.as_bytes()))
}

/// `Bearer xyz` → `xyz` (the scheme is case-insensitive).
fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = header.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// The value of cookie `name` in the `Cookie` headers.
pub fn cookie<'h>(headers: &'h axum::http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Compares without stopping at the first difference (lengths are not secret).
fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(token: bool) -> (Auth, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("dir");
        let users_file = dir.path().join("users");
        let mut users = Users::default();
        users.by_name.insert(
            "alice".into(),
            crate::web::users::hash_password("a long password").expect("hash"),
        );
        users.write(&users_file).expect("write");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "0123456789abcdef0123456789abcdef\n").expect("token");
        let config = WebConfig {
            listen: crate::config::web::DEFAULT_WEB_LISTEN,
            users_file: Some(users_file),
            token_file: token.then_some(token_file),
            allow_actions: true,
            public_url: None,
        };
        (Auth::new(&config).expect("auth"), dir)
    }

    fn headers(pairs: &[(&str, &str)]) -> axum::http::HeaderMap {
        let mut map = axum::http::HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        map
    }

    #[tokio::test]
    async fn sessions_basic_and_bearer_identify_the_caller() {
        let (auth, _dir) = auth(true);
        assert_eq!(auth.authenticate(&headers(&[])).await, Err(Denied::Missing));
        let basic = base64::engine::general_purpose::STANDARD.encode("alice:a long password");
        let p = auth
            .authenticate(&headers(&[("authorization", &format!("Basic {basic}"))]))
            .await
            .expect("basic");
        assert_eq!((p.user.as_str(), &p.via), ("alice", &Via::Basic));
        let wrong = base64::engine::general_purpose::STANDARD.encode("alice:nope");
        assert_eq!(
            auth.authenticate(&headers(&[("authorization", &format!("Basic {wrong}"))]))
                .await,
            Err(Denied::Wrong)
        );
        let p = auth
            .authenticate(&headers(&[(
                "authorization",
                "Bearer 0123456789abcdef0123456789abcdef",
            )]))
            .await
            .expect("bearer");
        assert_eq!(p.via, Via::Bearer);
        let set_cookie = auth.login("alice");
        let value = set_cookie.split(';').next().expect("pair").to_owned();
        let p = auth
            .authenticate(&headers(&[("cookie", &format!("other=1; {value}"))]))
            .await
            .expect("session");
        assert_eq!(p.user, "alice");
        assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
        auth.logout(&p);
        assert_eq!(
            auth.authenticate(&headers(&[("cookie", &value)])).await,
            Err(Denied::Missing)
        );
    }

    /// A user removed from the file (the file read again within two seconds) is refused over
    /// Basic at once, though its credentials were cached for minutes: the cache was consulted
    /// before the file, and only a miss read it again.
    #[tokio::test(start_paused = true)]
    async fn a_removed_users_cached_basic_credentials_stop_working() {
        let (auth, dir) = auth(false);
        let basic = base64::engine::general_purpose::STANDARD.encode("alice:a long password");
        let header = headers(&[("authorization", &format!("Basic {basic}"))]);
        assert!(auth.authenticate(&header).await.is_ok(), "cached now");
        let mut users = Users::default();
        users.by_name.insert(
            "bob".into(),
            crate::web::users::hash_password("another long password").expect("hash"),
        );
        users.write(&dir.path().join("users")).expect("write");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(auth.authenticate(&header).await, Err(Denied::Wrong));
    }

    #[tokio::test]
    async fn csrf_tokens_bind_to_the_session_and_bearer_needs_none() {
        let (auth, _dir) = auth(true);
        let a = Principal {
            user: "alice".into(),
            via: Via::Session { id: "s1".into() },
        };
        let b = Principal {
            user: "alice".into(),
            via: Via::Session { id: "s2".into() },
        };
        let token = auth.csrf_token(&a).expect("token");
        assert!(auth.csrf_ok(&a, Some(&token)));
        assert!(!auth.csrf_ok(&b, Some(&token)), "another session's token");
        assert!(!auth.csrf_ok(&a, None));
        assert!(!auth.csrf_ok(&a, Some("")));
        let bearer = Principal {
            user: TOKEN_USER.into(),
            via: Via::Bearer,
        };
        assert!(auth.csrf_ok(&bearer, None));
        let open = Principal {
            user: "anonymous".into(),
            via: Via::Open,
        };
        assert!(!auth.csrf_ok(&open, None));
    }

    #[tokio::test]
    async fn repeated_failures_throttle_the_name() {
        let (auth, _dir) = auth(false);
        for _ in 0..MAX_FAILURES {
            assert_eq!(auth.verify("alice", "wrong").await, Ok(false));
        }
        assert_eq!(
            auth.verify("alice", "a long password").await,
            Err(Denied::Throttled)
        );
        assert_eq!(auth.verify("bob", "whatever").await, Ok(false));
    }
}
