//! The `--storages FILE` of `claid-hotfolder emulator`: storage connectors given up front, in
//! YAML, in either of two shapes per entry:
//!
//! - the emulator's own: `{claid_name, bucket, prefix, endpoint, region, access_key_id,
//!   secret_access_key}`;
//! - the daemon's `storages:` entries: `{claid_name, url: s3://bucket/prefix, endpoint, region,
//!   credentials_file}` (a YAML file with `access_key_id` and `secret_access_key`).
//!
//! Without keys or a credentials file an entry takes `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY` from the environment. The file holds a list of entries, or a map of
//! name → entry, or a map with a `storages:` key holding either (every other top-level key is
//! ignored, so the daemon's config file itself can be given).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::emulator::storage::{StorageConnector, check_name};
use crate::objects::{
    Access, Credentials, GcsKey, ObjectError, ObjectStorage, ObjectStorageConfig, Provider, S3Url,
};
use crate::text::escape;

/// Why a storages file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoragesFileError {
    #[error("cannot read the storages file {}: {cause}", path.display())]
    Read { path: PathBuf, cause: String },
    #[error("storages file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("storages file {}, entry {entry}: {message}", path.display())]
    Entry {
        path: PathBuf,
        entry: String,
        message: String,
    },
}

/// One entry, in either shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    claid_name: Option<String>,
    url: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    credentials_file: Option<PathBuf>,
    /// The daemon's own option (a local copy of storage outputs): accepted and ignored, so the
    /// daemon's config can be given as it is.
    #[serde(default, rename = "output_local_copy")]
    _output_local_copy: Option<serde_yaml::Value>,
}

/// Reads the connectors of a storages file; every connector's client is built (no request is
/// made), so a bad endpoint or bucket name is reported here with its entry.
pub fn load(path: &Path) -> Result<Vec<StorageConnector>, StoragesFileError> {
    let text = std::fs::read_to_string(path).map_err(|err| StoragesFileError::Read {
        path: path.to_path_buf(),
        cause: crate::os_error::OsCause(&err).to_string(),
    })?;
    let parse_error = |message: String| StoragesFileError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let mut document: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|err| parse_error(err.to_string()))?;
    if let Some(inner) = document
        .as_mapping_mut()
        .and_then(|map| map.remove("storages"))
    {
        document = inner;
    }
    // Each entry is named for messages: `[0]` in a list, its key in a map.
    let named: Vec<(String, serde_yaml::Value)> = match document {
        serde_yaml::Value::Sequence(list) => list
            .into_iter()
            .enumerate()
            .map(|(idx, entry)| (format!("[{idx}]"), entry))
            .collect(),
        serde_yaml::Value::Mapping(map) => map
            .into_iter()
            .map(|(key, entry)| {
                let name = match key {
                    serde_yaml::Value::String(name) => name,
                    other => serde_yaml::to_string(&other).unwrap_or_default(),
                };
                (name.trim().to_owned(), entry)
            })
            .collect(),
        _ => {
            return Err(parse_error(
                "expected a list of storages, a map of name → storage, or a map with a storages: key holding either".to_owned(),
            ));
        }
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let mut seen = BTreeSet::new();
    let mut connectors = Vec::with_capacity(named.len());
    for (entry_name, value) in named {
        let fail = |message: String| StoragesFileError::Entry {
            path: path.to_path_buf(),
            entry: escape(&entry_name),
            message,
        };
        let entry: Entry = serde_yaml::from_value(value).map_err(|err| {
            let message = err.to_string();
            // A type error quotes the value, which may be a secret: say what was expected only.
            fail(if message.contains("invalid type") || message.contains("invalid value") {
                "every field takes a string value (credentials_file: a path)".to_owned()
            } else {
                format!(
                    "{message} (a storage has claid_name, url or bucket, and optionally prefix, endpoint, region, access_key_id and secret_access_key or credentials_file)"
                )
            })
        })?;
        let connector = connector(entry, base).map_err(fail)?;
        if !seen.insert(connector.name.clone()) {
            return Err(fail(format!(
                "claid_name \"{}\" is used twice",
                escape(&connector.name)
            )));
        }
        connectors.push(connector);
    }
    Ok(connectors)
}

/// One entry → a connector, or the message naming its problem.
fn connector(entry: Entry, base: &Path) -> Result<StorageConnector, String> {
    let name = entry
        .claid_name
        .ok_or("claid_name is required (the connector name in storage://NAME/…)")?;
    check_name(&name).map_err(|reason| format!("claid_name {reason}"))?;
    let (provider, bucket, prefix) = match (entry.url, entry.bucket) {
        (Some(url), None) => {
            if entry.prefix.is_some() {
                return Err(
                    "give the prefix inside url (s3://bucket/prefix), not as prefix".into(),
                );
            }
            let url = S3Url::parse(&url).map_err(|err| format!("url: {err}"))?;
            (url.provider, url.bucket, url.prefix)
        }
        (None, Some(bucket)) => {
            let prefix = entry.prefix.unwrap_or_default();
            (Provider::S3, bucket, prefix.trim_matches('/').to_owned())
        }
        (Some(_), Some(_)) => return Err("give either url or bucket, not both".into()),
        (None, None) => return Err("url (s3://bucket/prefix) or bucket is required".into()),
    };
    let resolve = |file: PathBuf| {
        if file.is_relative() {
            base.join(file)
        } else {
            file
        }
    };
    // A gs:// bucket: a service account's key file (or GOOGLE_APPLICATION_CREDENTIALS).
    if provider == Provider::Gcs {
        if entry.access_key_id.is_some() || entry.secret_access_key.is_some() {
            return Err("a gs:// storage takes a service account's key as credentials_file, not access_key_id and secret_access_key".into());
        }
        let key = match entry.credentials_file {
            Some(file) => GcsKey::from_file(&resolve(file)),
            None => GcsKey::from_env(),
        }
        .map_err(|err| err.to_string())?;
        let storage = ObjectStorageConfig {
            bucket,
            prefix,
            endpoint: entry.endpoint,
            region: entry.region,
            access: Access::Gcs(key),
        };
        ObjectStorage::new(&storage).map_err(|err: ObjectError| err.to_string())?;
        return Ok(StorageConnector { name, storage });
    }
    let credentials = match (
        entry.access_key_id,
        entry.secret_access_key,
        entry.credentials_file,
    ) {
        (Some(id), Some(secret), None) => Credentials::new(id, secret),
        (None, None, Some(file)) => {
            Credentials::from_file(&resolve(file)).map_err(|err| err.to_string())?
        }
        (None, None, None) => Credentials::from_env().map_err(|err| err.to_string())?,
        (_, _, Some(_)) => {
            return Err(
                "give either access_key_id and secret_access_key or credentials_file, not both"
                    .into(),
            );
        }
        _ => return Err("access_key_id and secret_access_key go together".into()),
    };
    let storage = ObjectStorageConfig {
        bucket,
        prefix,
        endpoint: entry.endpoint,
        region: entry.region,
        access: Access::S3(credentials),
    };
    // Catches bad endpoints and names now, with the entry, rather than at the first request.
    ObjectStorage::new(&storage).map_err(|err: ObjectError| err.to_string())?;
    Ok(StorageConnector { name, storage })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Vec<StorageConnector>, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("s3.yaml"),
            "access_key_id: FILEKEY\nsecret_access_key: file-secret\n",
        )
        .expect("credentials");
        let path = dir.path().join("storages.yaml");
        std::fs::write(&path, text).expect("write");
        load(&path).map_err(|err| err.to_string())
    }

    #[test]
    fn both_shapes_give_the_same_connector() {
        let own = load_text(
            "- claid_name: cat\n  bucket: bkt\n  prefix: raw/\n  endpoint: http://127.0.0.1:9\n  access_key_id: FILEKEY\n  secret_access_key: file-secret\n",
        )
        .expect("own shape");
        let daemon = load_text(
            "api: {base_url: embedded}\nstorages:\n  catalog:\n    claid_name: cat\n    url: s3://bkt/raw\n    endpoint: http://127.0.0.1:9\n    credentials_file: s3.yaml\n    output_local_copy: true\n",
        )
        .expect("daemon shape");
        assert_eq!(own, daemon);
        assert_eq!(own[0].storage.prefix, "raw");
        assert_eq!(own[0].storage.access.key_id(), "FILEKEY");
    }

    #[test]
    fn problems_name_the_entry_and_never_the_secret() {
        for (text, needle) in [
            (
                "- bucket: b\n  access_key_id: a\n  secret_access_key: s\n",
                "claid_name is required",
            ),
            (
                "- claid_name: x\n  access_key_id: a\n  secret_access_key: s\n",
                "url (s3://bucket/prefix) or bucket",
            ),
            (
                "- claid_name: x\n  url: s3://b/../p\n  access_key_id: a\n  secret_access_key: s\n",
                "url:",
            ),
            (
                "- claid_name: x\n  bucket: b\n  access_key_id: a\n",
                "go together",
            ),
            (
                "- claid_name: x\n  bucket: b\n  credentials_file: none.yaml\n",
                "none.yaml",
            ),
            (
                "- claid_name: x\n  bucket: b\n  endpoint: ftp://h\n  access_key_id: a\n  secret_access_key: hunter2\n",
                "endpoint",
            ),
            (
                "- claid_name: x/y\n  bucket: b\n  access_key_id: a\n  secret_access_key: s\n",
                "claid_name",
            ),
            (
                "- claid_name: x\n  bucket: b\n  acces_key_id: a\n",
                "acces_key_id",
            ),
            (
                "a: {claid_name: x, bucket: b, access_key_id: a, secret_access_key: s}\nb: {claid_name: x, bucket: c, access_key_id: a, secret_access_key: s}\n",
                "used twice",
            ),
        ] {
            let err = load_text(text).expect_err(text);
            assert!(
                err.contains(needle) && err.contains("storages.yaml"),
                "{text}: {err}"
            );
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
