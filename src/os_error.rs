//! OS errors named the way an operator searches for them: `ENAMETOOLONG: file name too long`,
//! never a bare "i/o error". [`OsCause`] renders an `io::Error` with its errno name;
//! [`root_cause`] finds the OS error (or the innermost message) in any error's source chain,
//! for errors that wrap one (reqwest, hyper).
//!
//! The names come from a table over the `libc` constants, so the numbers are right on every
//! platform; the text is the C library's, lower-cased (`strerror`, as std prints it).

use std::error::Error;
use std::fmt;
use std::io;

/// The symbolic name of an errno value (`ENOSPC`), for the common ones.
pub fn errno_name(code: i32) -> Option<&'static str> {
    ERRNO_NAMES
        .iter()
        .find(|(value, _)| *value == code)
        .map(|(_, name)| *name)
}

/// `io::Error` as `ENAMETOOLONG: file name too long`; an error without an errno (or one not in
/// the table) is written as its own text (`os error N` for unnamed ones).
#[derive(Clone, Copy)]
pub struct OsCause<'a>(pub &'a io::Error);

impl fmt::Display for OsCause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(code) = self.0.raw_os_error().or_else(|| wrapped_errno(self.0)) else {
            return write!(f, "{}", crate::text::Escaped::str(&self.0.to_string()));
        };
        let text = strerror(code);
        match errno_name(code) {
            Some(name) => write!(f, "{name}: {text}"),
            None => write!(f, "{text} (os error {code})"),
        }
    }
}

/// The errno of an OS error another library wrapped in an `io::Error` of its own: as its
/// payload, or only as the `Debug` text of one (sled's failed flush reads `Os { code: 28,
/// kind: StorageFull, message: "No space left on device" }`, which reached `/healthz` as such).
fn wrapped_errno(err: &io::Error) -> Option<i32> {
    if let Some(inner) = err.get_ref()
        && let Some(inner) = inner.downcast_ref::<io::Error>()
    {
        return inner.raw_os_error().or_else(|| wrapped_errno(inner));
    }
    // The whole message is the `Debug` form (not a message quoting one, which may be text a
    // user wrote).
    let text = err.to_string();
    let rest = text.strip_prefix("Os { code: ")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// What went wrong at the bottom of `err`'s source chain: the first `io::Error` with an errno,
/// named ([`OsCause`]), else the innermost error's message. `None` when `err` has no source.
pub fn root_cause(err: &(dyn Error + 'static)) -> Option<String> {
    let mut source = err.source();
    let mut innermost = None;
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            if io.raw_os_error().is_some() {
                return Some(OsCause(io).to_string());
            }
        }
        innermost = Some(cause);
        source = cause.source();
    }
    innermost.map(|cause| crate::text::escape(&cause.to_string()))
}

/// The C library's text for `code`, lower-cased the way messages here are written.
fn strerror(code: i32) -> String {
    let text = io::Error::from_raw_os_error(code).to_string();
    // std writes "File name too long (os error 36)".
    let text = match text.rfind(" (os error ") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("os error {code}"),
    }
}

/// (value, name) for the errno values a file writer or an HTTP client meets. Aliases that share
/// a value (`EWOULDBLOCK`, `EDEADLOCK`, `EOPNOTSUPP` on Linux) are listed under one name.
const ERRNO_NAMES: &[(i32, &str)] = &[
    (libc::EPERM, "EPERM"),
    (libc::ENOENT, "ENOENT"),
    (libc::ESRCH, "ESRCH"),
    (libc::EINTR, "EINTR"),
    (libc::EIO, "EIO"),
    (libc::ENXIO, "ENXIO"),
    (libc::E2BIG, "E2BIG"),
    (libc::ENOEXEC, "ENOEXEC"),
    (libc::EBADF, "EBADF"),
    (libc::ECHILD, "ECHILD"),
    (libc::EAGAIN, "EAGAIN"),
    (libc::ENOMEM, "ENOMEM"),
    (libc::EACCES, "EACCES"),
    (libc::EFAULT, "EFAULT"),
    (libc::EBUSY, "EBUSY"),
    (libc::EEXIST, "EEXIST"),
    (libc::EXDEV, "EXDEV"),
    (libc::ENODEV, "ENODEV"),
    (libc::ENOTDIR, "ENOTDIR"),
    (libc::EISDIR, "EISDIR"),
    (libc::EINVAL, "EINVAL"),
    (libc::ENFILE, "ENFILE"),
    (libc::EMFILE, "EMFILE"),
    (libc::ENOTTY, "ENOTTY"),
    (libc::ETXTBSY, "ETXTBSY"),
    (libc::EFBIG, "EFBIG"),
    (libc::ENOSPC, "ENOSPC"),
    (libc::ESPIPE, "ESPIPE"),
    (libc::EROFS, "EROFS"),
    (libc::EMLINK, "EMLINK"),
    (libc::EPIPE, "EPIPE"),
    (libc::ERANGE, "ERANGE"),
    (libc::EDEADLK, "EDEADLK"),
    (libc::ENAMETOOLONG, "ENAMETOOLONG"),
    (libc::ENOLCK, "ENOLCK"),
    (libc::ENOSYS, "ENOSYS"),
    (libc::ENOTEMPTY, "ENOTEMPTY"),
    (libc::ELOOP, "ELOOP"),
    (libc::ENOTSUP, "ENOTSUP"),
    (libc::EOVERFLOW, "EOVERFLOW"),
    (libc::EILSEQ, "EILSEQ"),
    (libc::ENOTSOCK, "ENOTSOCK"),
    (libc::EMSGSIZE, "EMSGSIZE"),
    (libc::EPROTO, "EPROTO"),
    (libc::EPROTONOSUPPORT, "EPROTONOSUPPORT"),
    (libc::EAFNOSUPPORT, "EAFNOSUPPORT"),
    (libc::EADDRINUSE, "EADDRINUSE"),
    (libc::EADDRNOTAVAIL, "EADDRNOTAVAIL"),
    (libc::ENETDOWN, "ENETDOWN"),
    (libc::ENETUNREACH, "ENETUNREACH"),
    (libc::ENETRESET, "ENETRESET"),
    (libc::ECONNABORTED, "ECONNABORTED"),
    (libc::ECONNRESET, "ECONNRESET"),
    (libc::ENOBUFS, "ENOBUFS"),
    (libc::EISCONN, "EISCONN"),
    (libc::ENOTCONN, "ENOTCONN"),
    (libc::ETIMEDOUT, "ETIMEDOUT"),
    (libc::ECONNREFUSED, "ECONNREFUSED"),
    (libc::EHOSTDOWN, "EHOSTDOWN"),
    (libc::EHOSTUNREACH, "EHOSTUNREACH"),
    (libc::EALREADY, "EALREADY"),
    (libc::EINPROGRESS, "EINPROGRESS"),
    (libc::ESTALE, "ESTALE"),
    (libc::EDQUOT, "EDQUOT"),
    (libc::ECANCELED, "ECANCELED"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_are_named_with_their_text() {
        let check = |code: i32, expect: &str| {
            let err = io::Error::from_raw_os_error(code);
            assert_eq!(OsCause(&err).to_string(), expect);
        };
        check(libc::ENAMETOOLONG, "ENAMETOOLONG: file name too long");
        check(libc::ENOSPC, "ENOSPC: no space left on device");
        check(libc::EMFILE, "EMFILE: too many open files");
        check(libc::ECONNREFUSED, "ECONNREFUSED: connection refused");
        check(libc::EROFS, "EROFS: read-only file system");
    }

    #[test]
    fn errors_without_an_errno_keep_their_text_escaped() {
        let err = io::Error::other("disk said\nno");
        assert_eq!(OsCause(&err).to_string(), "disk said\\nno");
        let unnamed = io::Error::from_raw_os_error(4000);
        assert!(OsCause(&unnamed).to_string().ends_with("(os error 4000)"));
    }

    /// An OS error wrapped by another library (sled's flush) is named by its errno too: as
    /// the payload of an `io::Error`, or as only its `Debug` text.
    #[test]
    fn a_wrapped_os_error_is_named() {
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        let as_text = io::Error::new(io::ErrorKind::StorageFull, format!("{full:?}"));
        assert_eq!(
            OsCause(&as_text).to_string(),
            "ENOSPC: no space left on device"
        );
        let as_payload = io::Error::other(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(
            OsCause(&as_payload).to_string(),
            "ENOSPC: no space left on device"
        );
        let db = crate::store::DbCause(&sled::Error::Io(as_text)).to_string();
        assert_eq!(db, "ENOSPC: no space left on device");
    }

    #[test]
    fn every_name_is_unique_and_looks_like_an_errno() {
        let mut names: Vec<_> = ERRNO_NAMES.iter().map(|(_, n)| *n).collect();
        let mut values: Vec<_> = ERRNO_NAMES.iter().map(|(v, _)| *v).collect();
        names.sort_unstable();
        names.dedup();
        values.sort_unstable();
        values.dedup();
        assert_eq!(names.len(), ERRNO_NAMES.len());
        assert_eq!(values.len(), ERRNO_NAMES.len(), "an alias is listed twice");
        assert!(names.iter().all(|n| n.starts_with('E')));
    }

    #[test]
    fn the_root_cause_is_the_named_os_error_in_the_chain() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl Error for Outer {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        let outer = Outer(io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert_eq!(
            root_cause(&outer).as_deref(),
            Some("ECONNREFUSED: connection refused")
        );
        let plain = io::Error::other("x");
        assert_eq!(root_cause(&plain), None);
    }
}
