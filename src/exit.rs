//! Exit codes: the one table every subcommand follows (README.md "Exit codes"), in the style of
//! BSD's sysexits.h, and [`classify`], which finds the row an error belongs to from the typed
//! errors in its source chain.
//!
//! The rule behind the rows: 64 means the command line or a config is wrong (fix what you
//! wrote), 65 a file handed to `validate` or `plan` is wrong, 69 a service is not there (the
//! Claid API, the daemon), 73 something could not be created, 74 reading or writing failed,
//! 75 try again later (stopped by a signal, the store is busy), 77 access was refused (by the
//! operating system or by the API). A missing API key is 64: nothing refused it, it is not
//! configured; a key the API refuses, and a key file the user may not read, are 77.

use std::error::Error;
use std::io;

use crate::admin::{AdminError, ReplayError};
use crate::config::ConfigError;
use crate::daemon::FatalError;
use crate::output::OutputError;
use crate::store::StoreError;
use crate::watcher::WatchError;

/// Success (EX_OK). Also `replay` with nothing to replay, and `run` stopped by SIGTERM after a
/// drain.
pub const OK: i32 = 0;
/// `run --once`: some job failed, is held in doubt, or a manifest was rejected.
pub const JOBS_FAILED: i32 = 2;
/// The command line or the config is invalid, or a configured file or folder is missing
/// (EX_USAGE).
pub const USAGE: i32 = 64;
/// A manifest or config given to `validate` or `plan` has problems (EX_DATAERR).
pub const DATA_ERR: i32 = 65;
/// A service is unavailable: `run --once` gave up on an unreachable Claid API, the embedded
/// emulator could not start, or the daemon's admin socket failed to answer (EX_UNAVAILABLE).
pub const UNAVAILABLE: i32 = 69;
/// A folder, the admin socket, the metrics listener or an output file cannot be created
/// (EX_CANTCREAT).
pub const CANT_CREATE: i32 = 73;
/// Reading or writing failed: the store, a file, the inbox (EX_IOERR).
pub const IO_ERR: i32 = 74;
/// Try again later: stopped by a signal before the work was done, or the store is held by a
/// daemon that is starting or stopping (EX_TEMPFAIL).
pub const TEMP_FAIL: i32 = 75;
/// Access refused: the operating system denied a file, folder or socket, or the API refused
/// the key, the credits or the scope (EX_NOPERM).
pub const NO_PERM: i32 = 77;

/// Every exit code with its sysexits name (`-` for ours) and what it means, in order: the
/// README's table lists exactly these.
pub const TABLE: &[(i32, &str, &str)] = &[
    (OK, "EX_OK", "success"),
    (
        JOBS_FAILED,
        "-",
        "`run --once`: some job failed, is held in doubt, or a manifest was rejected",
    ),
    (USAGE, "EX_USAGE", "the command line or the config is wrong"),
    (
        DATA_ERR,
        "EX_DATAERR",
        "a file given to `validate` or `plan` has problems",
    ),
    (UNAVAILABLE, "EX_UNAVAILABLE", "a service is unavailable"),
    (CANT_CREATE, "EX_CANTCREAT", "something cannot be created"),
    (IO_ERR, "EX_IOERR", "reading or writing failed"),
    (TEMP_FAIL, "EX_TEMPFAIL", "try again later"),
    (NO_PERM, "EX_NOPERM", "access refused"),
];

/// An error whose exit code was chosen where it happened, with an optional hint (what to do)
/// printed on a line of its own. It may be the context of an `anyhow::Error`: [`classify`]
/// finds it anywhere in the chain.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Coded {
    pub code: i32,
    pub message: String,
    pub hint: Option<String>,
}

impl Coded {
    pub fn new(code: i32, message: impl Into<String>) -> Coded {
        Coded {
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Coded {
        self.hint = Some(hint.into());
        self
    }
}

/// The exit code of an error: a [`Coded`] anywhere in it decides; otherwise the first error of
/// its chain whose type says which row it belongs to; an error no type claims is an I/O error
/// (74).
pub fn classify(err: &anyhow::Error) -> i32 {
    if let Some(coded) = err.downcast_ref::<Coded>() {
        return coded.code;
    }
    err.chain().find_map(of_one).unwrap_or(IO_ERR)
}

/// The hint of the [`Coded`] in the error, if any.
pub fn hint(err: &anyhow::Error) -> Option<&str> {
    err.downcast_ref::<Coded>()
        .and_then(|coded| coded.hint.as_deref())
}

/// The row of one error of the chain, when its type decides it.
fn of_one(err: &(dyn Error + 'static)) -> Option<i32> {
    if let Some(coded) = err.downcast_ref::<Coded>() {
        return Some(coded.code);
    }
    if let Some(err) = err.downcast_ref::<FatalError>() {
        return Some(of_fatal(err));
    }
    if let Some(err) = err.downcast_ref::<ConfigError>() {
        return Some(of_config(err));
    }
    if let Some(err) = err.downcast_ref::<crate::web::users::UsersError>() {
        use crate::web::users::UsersError as U;
        return Some(match err {
            U::Read { cause, .. } => of_io(cause, Access::Read),
            U::Write { cause, .. } => of_io(cause, Access::Write),
            U::Hash(_) => IO_ERR,
            // A name, a password or a user that is not right: how it was asked for.
            U::Line { .. }
            | U::BadName(_)
            | U::ShortPassword
            | U::NoPassword
            | U::NoSuchUser(_)
            | U::NotConfigured(_) => USAGE,
        });
    }
    if let Some(err) = err.downcast_ref::<crate::storages::StorageError>() {
        return Some(err.exit_code());
    }
    if let Some(err) = err.downcast_ref::<StoreError>() {
        return of_store(err);
    }
    if let Some(err) = err.downcast_ref::<AdminError>() {
        return Some(match err {
            AdminError::Bind { cause, .. } | AdminError::MetricsBind { cause, .. } => {
                of_io(cause, Access::Create)
            }
            AdminError::Denied { .. } => NO_PERM,
            AdminError::Taken { .. } => TEMP_FAIL,
            AdminError::NotASocket { .. } => USAGE,
            AdminError::NotRunning { .. }
            | AdminError::Request { .. }
            | AdminError::Silent { .. } => UNAVAILABLE,
        });
    }
    if let Some(err) = err.downcast_ref::<ReplayError>() {
        return match err {
            ReplayError::NothingSelected
            | ReplayError::SeveralSelected
            | ReplayError::UnknownJob(_)
            | ReplayError::UnknownManifest(_)
            | ReplayError::Superseded(_) => Some(USAGE),
            ReplayError::UnderWay(..) => Some(TEMP_FAIL),
            ReplayError::Store(err) => of_store(err),
        };
    }
    if let Some(OutputError::Io { cause, .. }) = err.downcast_ref::<OutputError>() {
        return Some(of_io(cause, Access::Write));
    }
    if let Some(WatchError::Inbox { cause, .. }) = err.downcast_ref::<WatchError>() {
        return Some(of_io(cause, Access::Read));
    }
    if let Some(err) = err.downcast_ref::<io::Error>() {
        if err.raw_os_error().is_some() {
            return Some(of_io(err, Access::Read));
        }
    }
    None
}

/// The row of an error that stops the daemon's start (`validate` answers with it too).
pub fn of_fatal(err: &FatalError) -> i32 {
    match err {
        FatalError::Config(err) => of_config(err),
        FatalError::NoApiKey | FatalError::Client(_) => USAGE,
        FatalError::MissingFolder { .. }
        | FatalError::NotAFolder { .. }
        | FatalError::Overlap { .. } => USAGE,
        // Not restarted by the service (`RestartPreventExitStatus=64`): a human decides.
        FatalError::StoreGone { .. } => USAGE,
        // No folder can be made there (the exit table's "cannot create").
        FatalError::UnderAFile { .. } => CANT_CREATE,
        FatalError::FolderNotWritable { cause, .. } => of_io(cause, Access::Write),
        FatalError::Folder { cause, .. } => of_io(cause, Access::Create),
        FatalError::CleanOutbox(OutputError::Io { cause, .. }) => of_io(cause, Access::Write),
        FatalError::CleanOutbox(_) => IO_ERR,
        FatalError::Store(err) => of_store(err).unwrap_or(IO_ERR),
        FatalError::AlreadyRunning { .. }
        | FatalError::InboxTaken(_)
        | FatalError::StoreStuck { .. }
        | FatalError::Admin(AdminError::Taken { .. }) => TEMP_FAIL,
        FatalError::Admin(AdminError::NotASocket { .. }) => USAGE,
        FatalError::Admin(AdminError::Bind { cause, .. })
        | FatalError::Admin(AdminError::MetricsBind { cause, .. }) => of_io(cause, Access::Create),
        FatalError::Admin(_) => IO_ERR,
        FatalError::Emulator(_) => UNAVAILABLE,
        FatalError::Storage(err) => err.exit_code(),
        FatalError::Watcher(WatchError::Inbox { cause, .. }) => of_io(cause, Access::Read),
        FatalError::Watcher(_) => IO_ERR,
        FatalError::Web(crate::web::WebError::Bind { cause, .. }) => of_io(cause, Access::Create),
        // A users file the daemon's user may not read: access refused.
        FatalError::Web(crate::web::WebError::Users(crate::web::users::UsersError::Read {
            cause,
            ..
        })) if of_io(cause, Access::Read) == NO_PERM => NO_PERM,
        // A users or token file that is missing or wrong: what was configured is wrong.
        FatalError::Web(_) => USAGE,
        FatalError::Alerts(crate::alerts::AlertError::UrlFile { cause, .. }) => {
            match of_io(cause, Access::Read) {
                NO_PERM => NO_PERM,
                _ => USAGE,
            }
        }
        FatalError::Alerts(_) => USAGE,
        FatalError::Webhook(err) => of_webhook(err),
    }
}

/// The row of a webhook receiver that cannot start: a secret file the user may not read 77;
/// one that is missing, empty or readable by others is configured wrong (64); an address that
/// cannot be bound, as any listener.
pub fn of_webhook(err: &crate::webhook::WebhookError) -> i32 {
    use crate::webhook::WebhookError;
    match err {
        WebhookError::Bind { cause, .. } => of_io(cause, Access::Create),
        WebhookError::SecretUnreadable { cause, .. } => match of_io(cause, Access::Read) {
            NO_PERM => NO_PERM,
            _ => USAGE,
        },
        _ => USAGE,
    }
}

/// The row of a config (or API key file) that cannot be used.
pub fn of_config(err: &ConfigError) -> i32 {
    match err {
        ConfigError::Read { cause, .. } | ConfigError::ApiKeyFile { cause, .. } => {
            match of_io(cause, Access::Read) {
                NO_PERM => NO_PERM,
                // A missing or unreadable config or key file: what was configured is wrong.
                _ => USAGE,
            }
        }
        ConfigError::Invalid { .. }
        | ConfigError::ApiKeyEmpty { .. }
        | ConfigError::ApiKeyMalformed { .. } => USAGE,
    }
}

/// `None` for a store error that only wraps another (the caller looks further down).
fn of_store(err: &StoreError) -> Option<i32> {
    match err {
        StoreError::Locked { .. } => Some(TEMP_FAIL),
        StoreError::Open {
            source: sled::Error::Io(cause),
            ..
        } => Some(of_io(cause, Access::Read)),
        StoreError::Snapshot { cause, .. } => Some(of_io(cause, Access::Read)),
        _ => Some(IO_ERR),
    }
}

/// What was being done when an OS error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Create,
}

/// The row of an OS error: refused access is 77, a busy or interrupted resource 75, a failed
/// creation 73, anything else 74.
pub fn of_io(err: &io::Error, access: Access) -> i32 {
    match err.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => NO_PERM,
        Some(libc::EAGAIN | libc::EBUSY | libc::EINTR | libc::EADDRINUSE) => TEMP_FAIL,
        _ if access == Access::Create => CANT_CREATE,
        _ => IO_ERR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each code once, in ascending order, and every named constant in the table.
    #[test]
    fn the_table_lists_every_code_once() {
        let codes: Vec<i32> = TABLE.iter().map(|(code, _, _)| *code).collect();
        let mut sorted = codes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(codes, sorted);
        for code in [
            OK,
            JOBS_FAILED,
            USAGE,
            DATA_ERR,
            UNAVAILABLE,
            CANT_CREATE,
            IO_ERR,
            TEMP_FAIL,
            NO_PERM,
        ] {
            assert!(codes.contains(&code), "{code} in the table");
        }
    }

    #[test]
    fn os_errors_land_in_their_rows() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(of_io(&os(libc::EACCES), Access::Create), NO_PERM);
        assert_eq!(of_io(&os(libc::EPERM), Access::Read), NO_PERM);
        assert_eq!(of_io(&os(libc::ENOSPC), Access::Create), CANT_CREATE);
        assert_eq!(of_io(&os(libc::ENOSPC), Access::Write), IO_ERR);
        assert_eq!(of_io(&os(libc::EADDRINUSE), Access::Create), TEMP_FAIL);
        assert_eq!(of_io(&os(libc::EIO), Access::Read), IO_ERR);
    }

    #[test]
    fn a_coded_context_decides_over_what_it_wraps() {
        let inner = io::Error::from_raw_os_error(libc::EACCES);
        let err = anyhow::Error::from(inner).context(Coded::new(USAGE, "wrapped").with_hint("do"));
        assert_eq!(classify(&err), USAGE);
        assert_eq!(hint(&err), Some("do"));
        let deeper = err.context("one more layer");
        assert_eq!(classify(&deeper), USAGE, "{deeper:#}");
        let bare = anyhow::anyhow!("no type claims this");
        assert_eq!(classify(&bare), IO_ERR);
        let typed = anyhow::Error::from(StoreError::Locked { path: "/x".into() })
            .context("cannot open the store");
        assert_eq!(classify(&typed), TEMP_FAIL);
    }
}
