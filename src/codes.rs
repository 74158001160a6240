//! Stable names: the failure codes persisted on failed jobs, and the names of job states. Each is
//! a Rust enum with exactly one kebab-case spelling (its serde name), used by the store, the
//! reports, the metrics labels, the CLI and ARCHITECTURE.md (a tidy test compares the list there
//! with [`FailureCode::ALL`]). Display texts may change; these names may not.

use serde::{Deserialize, Serialize};

/// Why a job failed. Persisted in the store and shown in reports as `<code>: <message>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureCode {
    /// Claid ended the task with status ERROR or CANCELLED.
    ClaidError,
    /// Claid answered 400 (e.g. the input URL could not be fetched).
    ClaidBadRequest,
    /// Claid answered 404 to a submit.
    ClaidNotFound,
    /// Claid answered 409.
    ClaidConflict,
    /// Claid answered 413.
    ClaidTooLarge,
    /// Claid answered 415.
    ClaidUnsupportedMedia,
    /// Claid answered 422 (its validation refused the request).
    ClaidInvalidRequest,
    /// Claid answered another 4xx.
    ClaidRejected,
    /// Claid answered 401 (the key was refused).
    ClaidUnauthorized,
    /// Claid answered 402 (no credits left).
    ClaidOutOfCredits,
    /// Claid answered 403 (the key lacks a scope).
    ClaidForbidden,
    /// The client could not be configured (a bad base URL or key).
    ClientConfig,
    /// A URL Claid returned (or an input URL) cannot be used.
    BadUrl,
    /// No connection could be made (nothing was sent).
    ConnectFailed,
    /// The request timed out.
    Timeout,
    /// The connection broke after the request was sent.
    ConnectionLost,
    /// Claid kept answering 429 beyond the retry budget.
    RateLimited,
    /// Claid kept answering 5xx beyond the retry budget.
    ServerError,
    /// An answer Claid sent could not be understood.
    BadResponse,
    /// The task id is unknown to Claid: its result cannot be fetched.
    TaskLost,
    /// Claid had not finished the task (or batch) after `api.poll.give_up_after`.
    TaskTimeout,
    /// The result's temporary URL is gone (it lives 24 h).
    ResultExpired,
    /// The result could not be downloaded.
    DownloadFailed,
    /// The result is larger than `limits.max_download_bytes`.
    DownloadTooLarge,
    /// The download ended before the announced length.
    DownloadTruncated,
    /// The downloaded bytes are not the image the result describes.
    ResultMismatch,
    /// A local input cannot be read.
    InputUnreadable,
    /// A local input now leads outside the inbox (a link was planted after validation).
    InputOutsideInbox,
    /// A local input changed after the manifest was validated.
    InputChanged,
    /// The output exists and `on_output_exists: fail` forbids replacing it.
    OutputExists,
    /// The output path leads outside the outbox (`..`, an absolute path or a symlink).
    OutputUnsafePath,
    /// The output name is too long for the outbox's filesystem (ENAMETOOLONG).
    OutputNameTooLong,
    /// The outbox is on a read-only filesystem (EROFS).
    OutputReadOnly,
    /// A folder of the output path is a file (ENOTDIR).
    OutputNotADirectory,
    /// The output path is a folder (EISDIR).
    OutputIsADirectory,
    /// The output path is not valid on the outbox's filesystem (EINVAL).
    OutputInvalidName,
    /// The disk stayed full beyond the retry budget (ENOSPC).
    DiskFull,
    /// Too many open files beyond the retry budget (EMFILE, ENFILE).
    OutputTooManyOpenFiles,
    /// The outbox refused the write beyond the retry budget (EACCES, EPERM).
    OutputPermissionDenied,
    /// Another local I/O error stayed beyond the retry budget (EIO, …).
    OutputIo,
    /// The manifest was saved again while it ran: jobs not yet submitted belong to the new version.
    Superseded,
    /// A batch result could not be matched to exactly one job; the job is left to a human.
    BatchUnmatched,
    /// A finished batch has no result and no error for this image.
    BatchMissingResult,
    /// A storage output's object is not in the bucket after Claid reported it written.
    ObjectMissing,
    /// The bucket of a storage stayed unreachable (or failed) beyond the retry budget.
    StorageUnreachable,
    /// The bucket refused the daemon's keys (403) for a storage output or a staged input.
    StorageDenied,
    /// A local input could not be staged into the bucket (`api.staging`).
    StagingFailed,
    /// A code this version does not know (a newer version wrote it).
    #[serde(other)]
    Unknown,
}

impl FailureCode {
    /// A task (or batch) Claid took and had not finished when its job failed (`task-timeout`),
    /// or whose polls it refused (`task-lost`): its result, if Claid announces it later by
    /// webhook, is still taken (see `pipeline::dispatch`).
    pub fn result_may_still_come(self) -> bool {
        matches!(self, FailureCode::TaskTimeout | FailureCode::TaskLost)
    }

    /// A storage output's object Claid wrote (and billed) could not be read or did not read
    /// as the edit's image: the object stays in the bucket, and a replay looks at it again
    /// instead of sending the image again (`JobV1::unwritten_result`).
    pub fn is_object_read(self) -> bool {
        matches!(
            self,
            FailureCode::StorageUnreachable
                | FailureCode::StorageDenied
                | FailureCode::ResultMismatch
        )
    }

    /// A storage output's object Claid reported written was not found (or found empty) after
    /// the looks: a replay looks for it once more before it sends the image again, since a
    /// bucket (or something in front of it) that answered "not found" for an object that was
    /// there had the replay bill the image again, uncounted. Found missing (or empty, or still
    /// the object its submit replaced) by that look, the image is made again.
    pub fn is_object_looked_for_again(self) -> bool {
        self == FailureCode::ObjectMissing
    }

    /// Claid's result could not be fetched or did not check out (its download failed, was
    /// too large, cut short, expired or not the image Claid described): Claid made (and
    /// billed) it.
    pub fn is_result_download(self) -> bool {
        matches!(
            self,
            FailureCode::ResultExpired
                | FailureCode::DownloadFailed
                | FailureCode::DownloadTooLarge
                | FailureCode::DownloadTruncated
                | FailureCode::ResultMismatch
        )
    }

    /// A write of a result into the outbox failed: Claid made (and billed) the result.
    pub fn is_local_write(self) -> bool {
        matches!(
            self,
            FailureCode::OutputExists
                | FailureCode::OutputUnsafePath
                | FailureCode::OutputNameTooLong
                | FailureCode::OutputReadOnly
                | FailureCode::OutputNotADirectory
                | FailureCode::OutputIsADirectory
                | FailureCode::OutputInvalidName
                | FailureCode::DiskFull
                | FailureCode::OutputTooManyOpenFiles
                | FailureCode::OutputPermissionDenied
                | FailureCode::OutputIo
        )
    }

    /// Every code, in declaration order (the docs list exactly these).
    pub const ALL: &[FailureCode] = &[
        FailureCode::ClaidError,
        FailureCode::ClaidBadRequest,
        FailureCode::ClaidNotFound,
        FailureCode::ClaidConflict,
        FailureCode::ClaidTooLarge,
        FailureCode::ClaidUnsupportedMedia,
        FailureCode::ClaidInvalidRequest,
        FailureCode::ClaidRejected,
        FailureCode::ClaidUnauthorized,
        FailureCode::ClaidOutOfCredits,
        FailureCode::ClaidForbidden,
        FailureCode::ClientConfig,
        FailureCode::BadUrl,
        FailureCode::ConnectFailed,
        FailureCode::Timeout,
        FailureCode::ConnectionLost,
        FailureCode::RateLimited,
        FailureCode::ServerError,
        FailureCode::BadResponse,
        FailureCode::TaskLost,
        FailureCode::TaskTimeout,
        FailureCode::ResultExpired,
        FailureCode::DownloadFailed,
        FailureCode::DownloadTooLarge,
        FailureCode::DownloadTruncated,
        FailureCode::ResultMismatch,
        FailureCode::InputUnreadable,
        FailureCode::InputOutsideInbox,
        FailureCode::InputChanged,
        FailureCode::OutputExists,
        FailureCode::OutputUnsafePath,
        FailureCode::OutputNameTooLong,
        FailureCode::OutputReadOnly,
        FailureCode::OutputNotADirectory,
        FailureCode::OutputIsADirectory,
        FailureCode::OutputInvalidName,
        FailureCode::DiskFull,
        FailureCode::OutputTooManyOpenFiles,
        FailureCode::OutputPermissionDenied,
        FailureCode::OutputIo,
        FailureCode::Superseded,
        FailureCode::BatchUnmatched,
        FailureCode::BatchMissingResult,
        FailureCode::ObjectMissing,
        FailureCode::StorageUnreachable,
        FailureCode::StorageDenied,
        FailureCode::StagingFailed,
        FailureCode::Unknown,
    ];

    /// The stable kebab-case name (the serde name).
    pub fn as_str(self) -> &'static str {
        use FailureCode::*;
        match self {
            ClaidError => "claid-error",
            ClaidBadRequest => "claid-bad-request",
            ClaidNotFound => "claid-not-found",
            ClaidConflict => "claid-conflict",
            ClaidTooLarge => "claid-too-large",
            ClaidUnsupportedMedia => "claid-unsupported-media",
            ClaidInvalidRequest => "claid-invalid-request",
            ClaidRejected => "claid-rejected",
            ClaidUnauthorized => "claid-unauthorized",
            ClaidOutOfCredits => "claid-out-of-credits",
            ClaidForbidden => "claid-forbidden",
            ClientConfig => "client-config",
            BadUrl => "bad-url",
            ConnectFailed => "connect-failed",
            Timeout => "timeout",
            ConnectionLost => "connection-lost",
            RateLimited => "rate-limited",
            ServerError => "server-error",
            BadResponse => "bad-response",
            TaskLost => "task-lost",
            TaskTimeout => "task-timeout",
            ResultExpired => "result-expired",
            DownloadFailed => "download-failed",
            DownloadTooLarge => "download-too-large",
            DownloadTruncated => "download-truncated",
            ResultMismatch => "result-mismatch",
            InputUnreadable => "input-unreadable",
            InputOutsideInbox => "input-outside-inbox",
            InputChanged => "input-changed",
            OutputExists => "output-exists",
            OutputUnsafePath => "output-unsafe-path",
            OutputNameTooLong => "output-name-too-long",
            OutputReadOnly => "output-read-only",
            OutputNotADirectory => "output-not-a-directory",
            OutputIsADirectory => "output-is-a-directory",
            OutputInvalidName => "output-invalid-name",
            DiskFull => "disk-full",
            OutputTooManyOpenFiles => "output-too-many-open-files",
            OutputPermissionDenied => "output-permission-denied",
            OutputIo => "output-io",
            Superseded => "superseded",
            BatchUnmatched => "batch-unmatched",
            BatchMissingResult => "batch-missing-result",
            ObjectMissing => "object-missing",
            StorageUnreachable => "storage-unreachable",
            StorageDenied => "storage-denied",
            StagingFailed => "staging-failed",
            Unknown => "unknown",
        }
    }

    /// The code with this name, if it is one.
    pub fn parse(name: &str) -> Option<FailureCode> {
        FailureCode::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == name)
    }
}

/// Compares with a spelled-out name: `code == "claid-error"`.
impl PartialEq<&str> for FailureCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for FailureCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of a job's lifecycle state (ARCHITECTURE.md "Crash safety"), as stored, listed by `jobs --state`, shown
/// in reports and used as the `state` label of metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateName {
    Queued,
    Submitting,
    Submitted,
    Downloading,
    /// Stored as `in_doubt` by earlier versions.
    #[serde(alias = "in_doubt")]
    InDoubt,
    Done,
    Failed,
    /// Failed with code `superseded`: a job a newer version of its manifest took over before
    /// it was submitted. Stored as `failed`; counted, listed and reported apart, since nothing
    /// went wrong with it and `replay --failed` does not take it.
    Superseded,
}

impl StateName {
    /// Every state, in lifecycle order.
    pub const ALL: [StateName; 8] = [
        StateName::Queued,
        StateName::Submitting,
        StateName::Submitted,
        StateName::Downloading,
        StateName::InDoubt,
        StateName::Done,
        StateName::Failed,
        StateName::Superseded,
    ];

    /// The stable kebab-case name (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Queued => "queued",
            StateName::Submitting => "submitting",
            StateName::Submitted => "submitted",
            StateName::Downloading => "downloading",
            StateName::InDoubt => "in-doubt",
            StateName::Done => "done",
            StateName::Failed => "failed",
            StateName::Superseded => "superseded",
        }
    }

    /// The state with this name (`in_doubt` is accepted for `in-doubt`).
    pub fn parse(name: &str) -> Option<StateName> {
        let name = if name == "in_doubt" { "in-doubt" } else { name };
        StateName::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Done, Failed or Superseded: nothing more happens without a replay.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StateName::Done | StateName::Failed | StateName::Superseded
        )
    }
}

/// `jobs --state`: clap accepts exactly these names and lists them when given another.
impl clap::ValueEnum for StateName {
    fn value_variants<'a>() -> &'a [Self] {
        &StateName::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let value = clap::builder::PossibleValue::new(self.as_str());
        Some(match self {
            StateName::InDoubt => value.alias("in_doubt"),
            _ => value,
        })
    }
}

impl std::fmt::Display for StateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `as_str` is the serde spelling, for every code and every state, and names are unique.
    #[test]
    fn one_spelling_each() {
        let mut seen = std::collections::BTreeSet::new();
        for code in FailureCode::ALL {
            let json = serde_json::to_value(code).expect("serializes");
            assert_eq!(json, serde_json::Value::from(code.as_str()));
            assert_eq!(FailureCode::parse(code.as_str()), Some(*code));
            assert!(seen.insert(code.as_str()), "{code} twice");
        }
        for state in StateName::ALL {
            let json = serde_json::to_value(state).expect("serializes");
            assert_eq!(json, serde_json::Value::from(state.as_str()));
            assert_eq!(StateName::parse(state.as_str()), Some(state));
        }
        let old: StateName = serde_json::from_str("\"in_doubt\"").expect("old spelling reads");
        assert_eq!(old, StateName::InDoubt);
        let unknown: FailureCode = serde_json::from_str("\"from-the-future\"").expect("reads");
        assert_eq!(unknown, FailureCode::Unknown);
    }
}
