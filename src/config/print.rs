//! `run --print-config`: the effective configuration (the file, then the `CLAID_HOTFOLDER__*`
//! variables, then the defaults of every key left out) as YAML that `validate` and `run
//! --config` accept back, keys in the order of `config/claid-hotfolder.yaml`. Credentials in
//! `api.base_url` (`https://user:password@host/…`) and in a storage's `endpoint` are replaced by
//! `REDACTED`; the API key and the storages' S3 keys are never part of a [`Config`] (a storage
//! shows the path of its credentials file, never what is in it).

use serde_json::Value as Json;
use serde_yaml::{Mapping, Value};

use crate::config::{BaseUrl, Config, InDoubtPolicy, LogFormat, OnManifestDone, OnOutputExists};

/// What replaces the user information of a URL.
pub const REDACTED: &str = "REDACTED";

/// The config as YAML, with a comment saying where it came from.
pub fn to_yaml(config: &Config) -> String {
    let body = serde_yaml::to_string(&to_value(config))
        .expect("a mapping of strings, numbers and booleans serializes");
    format!(
        "# The effective configuration of claid-hotfolder (`run --print-config`): the file, the\n\
         # CLAID_HOTFOLDER__* environment variables, and the default of every key left out.\n\
         # Folders are absolute. Credentials in URLs are replaced by {REDACTED}.\n{body}"
    )
}

/// The top-level keys a SIGHUP applies to new work; every other key needs a restart.
pub const RELOADABLE: [&str; 5] = [
    "profiles",
    "on_output_exists",
    "on_manifest_done",
    "in_doubt",
    "limits",
];

/// The dotted keys (`api.max_in_flight`, `webhook.listen`) whose values differ between two
/// configs, outside the [`RELOADABLE`] sections, sorted. A difference only in a credential that
/// printing hides (in `api.base_url` or a storage's `endpoint`) is named by the section holding it.
pub fn restart_keys(running: &Config, new: &Config) -> Vec<String> {
    fn leaves(value: &Value, prefix: &str, out: &mut std::collections::BTreeMap<String, Value>) {
        match value {
            Value::Mapping(map) => {
                for (key, child) in map {
                    let key = key.as_str().unwrap_or_default();
                    let dotted = if prefix.is_empty() {
                        key.to_owned()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    if !(prefix.is_empty() && RELOADABLE.contains(&key)) {
                        leaves(child, &dotted, out);
                    }
                }
            }
            leaf => {
                out.insert(prefix.to_owned(), leaf.clone());
            }
        }
    }
    let (mut old, mut now) = (Default::default(), Default::default());
    leaves(&to_value(running), "", &mut old);
    leaves(&to_value(new), "", &mut now);
    let mut keys: Vec<String> = old
        .keys()
        .chain(now.keys())
        .filter(|key| old.get(*key) != now.get(*key))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if keys.is_empty() {
        if running.api != new.api {
            keys.push("api.base_url".to_owned());
        }
        if running.storages != new.storages {
            keys.push("storages".to_owned());
        }
    }
    keys
}

/// The config as a YAML mapping, keys in the order of `config/claid-hotfolder.yaml`.
fn to_value(config: &Config) -> Value {
    let mut root = Mapping::new();
    root.insert("api".into(), api(config));
    let folders = &config.folders;
    root.insert(
        "folders".into(),
        map([
            ("inbox", path(&folders.inbox)),
            ("outbox", path(&folders.outbox)),
            ("archive", path(&folders.archive)),
            ("rejected", path(&folders.rejected)),
            ("state", path(&folders.state)),
            ("create", folders.create.into()),
        ]),
    );
    root.insert(
        "watch".into(),
        map([
            ("settle", duration(config.watch.settle)),
            ("rescan", duration(config.watch.rescan)),
            ("poll_only", config.watch.poll_only.into()),
        ]),
    );
    root.insert(
        "on_manifest_done".into(),
        match config.on_manifest_done {
            OnManifestDone::Archive => "archive",
            OnManifestDone::Delete => "delete",
            OnManifestDone::Keep => "keep",
        }
        .into(),
    );
    root.insert(
        "on_output_exists".into(),
        match config.on_output_exists {
            OnOutputExists::Replace => "replace",
            OnOutputExists::Skip => "skip",
            OnOutputExists::Fail => "fail",
        }
        .into(),
    );
    root.insert(
        "in_doubt".into(),
        match config.in_doubt {
            InDoubtPolicy::Resubmit => "resubmit",
            InDoubtPolicy::Hold => "hold",
        }
        .into(),
    );
    root.insert(
        "admin".into(),
        map([
            ("socket", path(&config.admin.socket)),
            (
                "metrics_listen",
                config
                    .admin
                    .metrics_listen
                    .map_or(Value::Null, |addr| addr.to_string().into()),
            ),
        ]),
    );
    root.insert(
        "log".into(),
        map([(
            "format",
            match config.log.format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }
            .into(),
        )]),
    );
    root.insert(
        "limits".into(),
        map([
            (
                "max_manifest_bytes",
                config.limits.max_manifest_bytes.into(),
            ),
            ("max_images", (config.limits.max_images as u64).into()),
            (
                "max_download_bytes",
                config.limits.max_download_bytes.into(),
            ),
            ("max_input_bytes", config.limits.max_input_bytes.into()),
        ]),
    );
    root.insert("shutdown_grace".into(), duration(config.shutdown_grace));
    let webhook = config.webhook.clone();
    let defaults = crate::webhook::WebhookConfig::default();
    let shown = webhook.clone().unwrap_or(defaults);
    root.insert(
        "webhook".into(),
        map([
            ("enabled", webhook.is_some().into()),
            ("listen", shown.listen.to_string().into()),
            (
                "secret_file",
                shown.secret_file.as_deref().map_or(Value::Null, path),
            ),
            ("poll_fallback", duration(shown.poll_fallback)),
        ]),
    );
    root.insert(
        "web".into(),
        crate::config::web::web_yaml(config.web.as_ref()),
    );
    root.insert(
        "alerts".into(),
        crate::config::web::alerts_yaml(&config.alerts),
    );
    let mut profiles = Mapping::new();
    for (name, profile) in &config.profiles {
        let mut fields = Mapping::new();
        fields.insert("operations".into(), json(&profile.operations));
        if let Some(output) = &profile.output {
            fields.insert("output".into(), json(output));
        }
        profiles.insert(name.as_str().into(), Value::Mapping(fields));
    }
    root.insert("profiles".into(), Value::Mapping(profiles));
    let mut storages = Mapping::new();
    for (name, entry) in &config.storages {
        storages.insert(
            name.as_str().into(),
            map([
                ("claid_name", entry.claid_name.as_str().into()),
                ("url", entry.url().into()),
                (
                    "endpoint",
                    entry
                        .endpoint
                        .as_deref()
                        .map_or(Value::Null, |url| redact_url(url).into()),
                ),
                ("region", entry.region.as_str().into()),
                (
                    "credentials_file",
                    entry.credentials_file.as_deref().map_or(Value::Null, path),
                ),
                ("output_local_copy", entry.output_local_copy.into()),
            ]),
        );
    }
    root.insert("storages".into(), Value::Mapping(storages));
    Value::Mapping(root)
}

/// `base_url` without the user information: `https://user:pw@host/v1` → `https://REDACTED@host/v1`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|at| at + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = crate::text::authority_len(rest);
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{REDACTED}{}", &url[..scheme_end], &rest[at..]),
        None => url.to_owned(),
    }
}

fn api(config: &Config) -> Value {
    let api = &config.api;
    map([
        (
            "base_url",
            match &api.base_url {
                BaseUrl::Embedded => "embedded".into(),
                // Its user information, and query values that carry secrets (`?token=`).
                BaseUrl::Url(url) => crate::text::redact_credentials(&redact_url(url))
                    .into_owned()
                    .into(),
            },
        ),
        (
            "api_key_file",
            api.api_key_file.as_deref().map_or(Value::Null, path),
        ),
        (
            "requests_per_second",
            u64::from(api.requests_per_second.get()).into(),
        ),
        (
            "requests_per_minute",
            u64::from(api.requests_per_minute.get()).into(),
        ),
        ("max_in_flight", (api.max_in_flight.get() as u64).into()),
        ("max_downloads", (api.max_downloads.get() as u64).into()),
        ("request_timeout", duration(api.request_timeout)),
        ("upload_timeout", duration(api.upload_timeout)),
        (
            "poll",
            map([
                ("min", duration(api.poll.min)),
                ("max", duration(api.poll.max)),
                ("give_up_after", duration(api.poll.give_up_after)),
            ]),
        ),
        ("unreachable_timeout", duration(api.unreachable_timeout)),
        (
            "batch",
            map([
                ("max_images", (api.batch.max_images as u64).into()),
                ("linger", duration(api.batch.linger)),
            ]),
        ),
        (
            "staging",
            api.staging
                .as_deref()
                .map_or(Value::Null, |name| name.into()),
        ),
        ("staging_delete", api.staging_delete.into()),
    ])
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Mapping(
        entries
            .into_iter()
            .map(|(key, value)| (Value::from(key), value))
            .collect(),
    )
}

/// `1m 30s`, `100ms`: the form the config takes.
fn duration(duration: std::time::Duration) -> Value {
    humantime::format_duration(duration).to_string().into()
}

fn path(path: &std::path::Path) -> Value {
    path.to_string_lossy().into_owned().into()
}

fn json(value: &Json) -> Value {
    serde_yaml::to_value(value).expect("a JSON value is a YAML value")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every dotted key under `value` (`api`, `api.poll`, `api.poll.min`), a profile's name
    /// written `*`.
    fn dotted_keys(value: &Value, prefix: &str, out: &mut Vec<String>) {
        let Value::Mapping(map) = value else { return };
        for (key, child) in map {
            let key = key.as_str().expect("string keys");
            let key = if prefix == "profiles" || prefix == "storages" {
                "*"
            } else {
                key
            };
            let dotted = if prefix.is_empty() {
                key.to_owned()
            } else {
                format!("{prefix}.{key}")
            };
            out.push(dotted.clone());
            // Below a profile's operations and output are Claid's keys, not the config's.
            if !(dotted.starts_with("profiles.*.")) {
                dotted_keys(child, &dotted, out);
            }
        }
    }

    /// A key added to the schema but not printed would be lost by a round trip through
    /// `--print-config`: the printed keys are exactly the schema's.
    #[test]
    fn every_key_of_the_schema_is_printed() {
        let text = "api: { base_url: embedded }\n\
                    folders: { inbox: /i, outbox: /o, archive: /a, rejected: /r, state: /s }\n\
                    profiles: { p: { operations: {}, output: { format: webp } } }\n\
                    storages: { s: { claid_name: c, url: s3://bkt/p } }\n";
        let config =
            crate::config::parse(text, std::path::Path::new("/etc/c.yaml")).expect("valid");
        let printed: Value = serde_yaml::from_str(&to_yaml(&config)).expect("yaml");
        let mut printed_keys = Vec::new();
        dotted_keys(&printed, "", &mut printed_keys);
        printed_keys.sort();
        let mut schema_keys = crate::config::known_keys();
        schema_keys.push("profiles.*".to_owned());
        schema_keys.push("storages.*".to_owned());
        schema_keys.sort();
        assert_eq!(printed_keys, schema_keys);
    }

    /// A storage prints its credentials file's path and never a key; an endpoint with user
    /// information is refused without being echoed; the print reads back as the same config.
    #[test]
    fn storages_print_without_secrets_and_read_back() {
        let text = "api: { base_url: embedded }\n\
                    folders: { inbox: /i, outbox: /o, archive: /a, rejected: /r, state: /s }\n\
                    storages:\n  catalog:\n    claid_name: catalog-s3\n    url: s3://bkt/raw/\n    endpoint: http://u:hunter2@127.0.0.1:9000\n    credentials_file: keys.yaml\n";
        let origin = std::path::Path::new("/etc/c.yaml");
        let refused = crate::config::parse(text, origin).expect_err("credentials in endpoint");
        assert!(!refused.to_string().contains("hunter2"), "{refused}");
        let text = text.replace("u:hunter2@", "");
        let config = crate::config::parse(&text, origin).expect("valid");
        let printed = to_yaml(&config);
        assert!(printed.contains("http://127.0.0.1:9000"), "{printed}");
        assert!(printed.contains("/etc/keys.yaml"), "{printed}");
        assert!(printed.contains("s3://bkt/raw"), "{printed}");
        let back = crate::config::parse(&printed, origin).expect("reads back");
        let entry = &back.storages["catalog"];
        assert_eq!(entry.bucket, "bkt");
        assert_eq!(entry.prefix, "raw");
        assert_eq!(entry.region, "us-east-1");
        assert_eq!(entry.claid_name, "catalog-s3");
    }

    #[test]
    fn user_information_is_redacted_and_nothing_else() {
        assert_eq!(
            redact_url("https://user:secret@proxy.example:8443/v1?x=a@b"),
            "https://REDACTED@proxy.example:8443/v1?x=a@b"
        );
        assert_eq!(
            redact_url("http://token@127.0.0.1/v1"),
            "http://REDACTED@127.0.0.1/v1"
        );
        assert_eq!(
            redact_url("https://api.claid.ai/v1/a@b"),
            "https://api.claid.ai/v1/a@b"
        );
    }

    /// `run --print-config` shows neither the user information of `api.base_url` nor a
    /// query value that carries a secret.
    #[test]
    fn the_printed_base_url_keeps_no_token() {
        let text = "api: { base_url: \"https://proxy.example/v1?token=abc123tok&region=eu\" }\n\
                    folders: { inbox: /i, outbox: /o, archive: /a, rejected: /r, state: /s }\n";
        let config = crate::config::parse(text, std::path::Path::new("/c.yaml")).expect("valid");
        let printed = to_yaml(&config);
        assert!(!printed.contains("abc123tok"), "{printed}");
        assert!(printed.contains("token=REDACTED&region=eu"), "{printed}");
    }
}
