//! The dashboard's users file (`web.users_file`): one `NAME:HASH` line per user, the hash an
//! argon2id PHC string with its own random salt (`$argon2id$v=19$m=19456,t=2,p=1$…`); lines
//! starting with `#` and blank lines are ignored. `claid-hotfolder web-user add|remove|list`
//! writes it; the daemon reads it at start and again whenever the file changes.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;

use crate::text::Escaped;

/// The shortest password `web-user add` accepts.
pub const MIN_PASSWORD_CHARS: usize = 10;

/// Problems with the users file or a user.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error(
        "cannot read the users file {}: {}; {}",
        Escaped::path(path),
        crate::os_error::OsCause(cause),
        if cause.kind() == std::io::ErrorKind::PermissionDenied {
            "the daemon's user may not read it: give it the service's group and mode 0640 (`chgrp claid-hotfolder FILE && chmod 640 FILE`)"
        } else {
            "create it with `claid-hotfolder web-user add NAME`"
        }
    )]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "cannot write the users file {}: {}",
        Escaped::path(path),
        crate::os_error::OsCause(cause)
    )]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "{}:{line}: expected `NAME:HASH` as `claid-hotfolder web-user add NAME` writes it",
        Escaped::path(path)
    )]
    Line { path: PathBuf, line: usize },
    #[error("a user name is 1 to 64 letters, digits, `.`, `_`, `-` or `@`; `{0}` is not")]
    BadName(String),
    #[error("the password is too short: use at least {MIN_PASSWORD_CHARS} characters")]
    ShortPassword,
    #[error(
        "no password was given: type it when asked, or give it as the first line of standard input"
    )]
    NoPassword,
    #[error("{} sets no `web.users_file`; set it, or give --users-file", Escaped::path(.0))]
    NotConfigured(PathBuf),
    #[error("no user `{0}` in the users file")]
    NoSuchUser(String),
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// The users, by name, with their PHC hash strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    pub by_name: BTreeMap<String, String>,
}

impl Users {
    /// Reads the users file; a missing file is an error (the caller says how to create it).
    pub fn read(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.to_owned(),
            cause: source,
        })?;
        Users::parse(&text, path)
    }

    /// Reads the users file, or an empty set when it does not exist yet (`web-user add`).
    pub fn read_or_empty(path: &Path) -> Result<Users, UsersError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Users::parse(&text, path),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Users::default()),
            Err(source) => Err(UsersError::Read {
                path: path.to_owned(),
                cause: source,
            }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Users, UsersError> {
        let mut by_name = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || UsersError::Line {
                path: path.to_owned(),
                line: n + 1,
            };
            let (name, hash) = line.split_once(':').ok_or_else(bad)?;
            if check_name(name).is_err() || PasswordHash::new(hash).is_err() {
                return Err(bad());
            }
            by_name.insert(name.to_owned(), hash.to_owned());
        }
        Ok(Users { by_name })
    }

    /// Whether `password` is `name`'s. Costs one argon2 verification (tens of milliseconds):
    /// call it on the blocking pool.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        let Some(hash) = self.by_name.get(name) else {
            // The same work for an unknown name, so timing does not tell names apart.
            let _ = hash_password(password);
            return false;
        };
        match PasswordHash::new(hash) {
            Ok(parsed) => Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut text = String::from(
            "# claid-hotfolder dashboard users: NAME:argon2id hash. Edit with `claid-hotfolder web-user`.\n",
        );
        for (name, hash) in &self.by_name {
            text.push_str(name);
            text.push(':');
            text.push_str(hash);
            text.push('\n');
        }
        text
    }

    /// Writes the file atomically (temp file, mode 0640, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<(), UsersError> {
        let fail = |cause| UsersError::Write {
            path: path.to_owned(),
            cause,
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(fail)?;
        let name = path.file_name().unwrap_or_default();
        let tmp = dir.join(crate::output::tmp_name(name));
        // The file the daemon reads keeps its owner and group (root and the service's group,
        // as the package lays it out); a new one takes its folder's group. Written by root,
        // it would otherwise be root's alone, and the service could not read it.
        let owner = std::fs::metadata(path)
            .or_else(|_| std::fs::metadata(&dir))
            .ok()
            .map(|meta| {
                use std::os::unix::fs::MetadataExt;
                let uid = path.exists().then(|| meta.uid());
                (uid, meta.gid())
            });
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
            if let Some((uid, gid)) = owner {
                // Best effort: a user may not give a file away (only root may).
                let _ = std::os::unix::fs::fchown(&file, uid, Some(gid));
            }
            file.write_all(self.render().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(err) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(err));
        }
        Ok(())
    }
}

/// Checks a user name: 1 to 64 of `A-Z a-z 0-9 . _ - @`.
pub fn check_name(name: &str) -> Result<(), UsersError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(UsersError::BadName(name.to_owned()))
    }
}

/// An argon2id PHC string of `password` with a fresh 16-byte random salt.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| UsersError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A users file written by root keeps the group the service reads it with: a new one its
    /// folder's (the package's `/etc/claid-hotfolder` is `root:claid-hotfolder`), a rewritten
    /// one its own; mode 0640 either way.
    #[test]
    fn the_users_file_keeps_the_group_the_service_reads_it_with() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("dir");
        let root = rustix::process::geteuid().is_root();
        let group = if root {
            std::os::unix::fs::chown(dir.path(), Some(0), Some(65534)).expect("chown");
            65534
        } else {
            std::fs::metadata(dir.path()).expect("dir").gid()
        };
        let path = dir.path().join("web-users");
        let mut users = Users::default();
        users.by_name.insert(
            "alice".into(),
            hash_password("correct horse battery").expect("hash"),
        );
        users.write(&path).expect("write");
        let meta = std::fs::metadata(&path).expect("written");
        assert_eq!(meta.gid(), group, "a new file takes its folder's group");
        assert_eq!(meta.mode() & 0o777, 0o640);
        if root {
            std::os::unix::fs::chown(&path, Some(0), Some(65533)).expect("chown");
            users.write(&path).expect("rewrite");
            assert_eq!(
                std::fs::metadata(&path).expect("rewritten").gid(),
                65533,
                "a rewritten file keeps its own group"
            );
        }
    }

    #[test]
    fn hashes_are_salted_and_verify() {
        let a = hash_password("correct horse battery").expect("hash");
        let b = hash_password("correct horse battery").expect("hash");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(a.starts_with("$argon2id$"), "{a}");
        let mut users = Users::default();
        users.by_name.insert("alice".into(), a);
        assert!(users.verify("alice", "correct horse battery"));
        assert!(!users.verify("alice", "correct horse"));
        assert!(!users.verify("bob", "correct horse battery"));
        let path = Path::new("users");
        assert_eq!(Users::parse(&users.render(), path).expect("parses"), users);
    }

    #[test]
    fn bad_lines_are_named() {
        let err = Users::parse("# c\n\nalice:not-a-hash\n", Path::new("u")).expect_err("bad");
        assert!(matches!(err, UsersError::Line { line: 3, .. }), "{err}");
        assert!(check_name("a b").is_err());
        assert!(check_name("ops@example.com").is_ok());
    }
}
