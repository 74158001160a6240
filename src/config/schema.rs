//! The key tree of the config file, and the key an unknown one most likely meant (same
//! section first, then a key of that name in another section, then words operators use).

use crate::config::TOP_KEYS;
use crate::yaml;

/// The key tree of the config file: `(dotted key, children)`; `*` = any name (profiles).
const SCHEMA: &[(&str, &[&str])] = &[
    ("", TOP_KEYS),
    (
        "api",
        &[
            "base_url",
            "api_key_file",
            "requests_per_second",
            "requests_per_minute",
            "max_in_flight",
            "max_downloads",
            "request_timeout",
            "upload_timeout",
            "poll",
            "unreachable_timeout",
            "batch",
            "staging",
            "staging_delete",
        ],
    ),
    ("api.poll", &["min", "max", "give_up_after"]),
    ("api.batch", &["max_images", "linger"]),
    (
        "folders",
        &["inbox", "outbox", "archive", "rejected", "state", "create"],
    ),
    ("watch", &["settle", "rescan", "poll_only"]),
    ("admin", &["socket", "metrics_listen"]),
    ("log", &["format"]),
    (
        "limits",
        &[
            "max_manifest_bytes",
            "max_images",
            "max_download_bytes",
            "max_input_bytes",
        ],
    ),
    ("profiles.*", &["operations", "output"]),
    (
        "storages.*",
        &[
            "claid_name",
            "url",
            "endpoint",
            "region",
            "credentials_file",
            "output_local_copy",
        ],
    ),
    (
        "webhook",
        &["enabled", "listen", "secret_file", "poll_fallback"],
    ),
    (
        "web",
        &[
            "enabled",
            "listen",
            "users_file",
            "token_file",
            "allow_actions",
            "public_url",
        ],
    ),
];

/// Every dotted key the config knows (for "did you mean" across sections, and the docs test);
/// `profiles.*.operations` stands for every profile's.
pub fn all_keys() -> Vec<String> {
    let mut keys = Vec::new();
    for (section, children) in SCHEMA {
        for child in *children {
            if section.is_empty() {
                keys.push((*child).to_owned());
            } else {
                keys.push(format!("{section}.{child}"));
            }
        }
    }
    keys
}

/// The keys allowed in `section` (`api`, `profiles.white-1000`, `` for the top).
pub fn known_keys(section: &str) -> &'static [&'static str] {
    let schema_key = schema_key(section);
    SCHEMA
        .iter()
        .find(|(name, _)| *name == schema_key)
        .map(|(_, children)| *children)
        .unwrap_or(&[])
}

/// `a.b` + `c` → `a.b.c`; `` + `c` → `c`.
pub fn join(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    }
}

/// `profiles.white-1000` → `profiles.*`, `storages.catalog` → `storages.*`.
fn schema_key(section: &str) -> String {
    for named in ["profiles", "storages"] {
        if section
            .strip_prefix(named)
            .is_some_and(|rest| rest.starts_with('.'))
        {
            return format!("{named}.*");
        }
    }
    section.to_owned()
}

/// The closest known key for an unknown one: same section first, then anywhere.
pub fn suggest(full: &str, known_here: &[&str], section: &str) -> Option<String> {
    let leaf = full.rsplit('.').next().unwrap_or(full);
    if let Some((_, meant)) = SYNONYMS.iter().find(|(typed, _)| *typed == leaf) {
        return Some((*meant).to_owned());
    }
    let mut best: Option<(usize, String)> = None;
    let mut consider = |candidate: String, distance: usize| {
        if best.as_ref().is_none_or(|(d, _)| distance < *d) {
            best = Some((distance, candidate));
        }
    };
    for key in known_here {
        let distance = similarity_distance(leaf, key);
        consider(join(section, key), distance);
    }
    if let Some((distance, candidate)) = &best {
        if *distance <= leaf.len().max(3) / 2 {
            return Some(candidate.clone());
        }
    }
    // A key placed in the wrong section (e.g. `api.settle` → `watch.settle`).
    for key in all_keys() {
        if key.rsplit('.').next() == Some(leaf) && !key.contains('*') {
            return Some(key);
        }
    }
    best.filter(|(distance, _)| *distance <= leaf.len().max(3) / 2)
        .map(|(_, candidate)| candidate)
}

/// Words operators reach for, and the key they mean.
const SYNONYMS: &[(&str, &str)] = &[
    ("rate", "api.requests_per_second"),
    ("rate_limit", "api.requests_per_second"),
    ("rps", "api.requests_per_second"),
    ("rpm", "api.requests_per_minute"),
    ("concurrency", "api.max_in_flight"),
    ("parallelism", "api.max_in_flight"),
    ("api_key", "api.api_key_file"),
    ("key", "api.api_key_file"),
    ("url", "api.base_url"),
    ("endpoint", "api.base_url"),
    ("timeout", "api.request_timeout"),
    ("debounce", "watch.settle"),
    ("interval", "watch.rescan"),
    ("polling", "watch.poll_only"),
    ("grace", "shutdown_grace"),
];

/// Levenshtein distance, with a bonus for a shared prefix (`rate` ~ `requests_per_second`).
fn similarity_distance(a: &str, b: &str) -> usize {
    let lev = yaml::levenshtein(a, b);
    // A known key that starts like the typed one, or contains it, is a likely meaning.
    if b.starts_with(a) || b.contains(a) || a.contains(b) {
        return lev.min(1);
    }
    let a_words: Vec<&str> = a.split('_').collect();
    if b.split('_').any(|word| {
        a_words
            .iter()
            .any(|w| w.len() >= 3 && word.starts_with(&w[..3]))
    }) {
        return lev.min(a.len().max(3) / 2);
    }
    lev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("api.rate", SCHEMA[1].1, "api").as_deref(),
            Some("api.requests_per_second")
        );
        assert_eq!(
            suggest("api.max_inflight", SCHEMA[1].1, "api").as_deref(),
            Some("api.max_in_flight")
        );
        assert_eq!(
            suggest("api.settle", SCHEMA[1].1, "api").as_deref(),
            Some("watch.settle")
        );
    }
}
