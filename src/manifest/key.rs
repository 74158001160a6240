//! The job key (README "Incremental"): the hex sha256 of the input's identity, the canonical JSON of the
//! request body and the output path, so an identical edit is recognised whatever the manifest.

use std::fmt;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::manifest::Input;

/// JSON with object keys sorted at every level, no whitespace: stable for hashing.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A job key as its 32 bytes; shown, compared with and stored as its 64 hex digits. A
/// validated manifest holds one per image until it is registered: as bytes, without a string
/// of its own, that is 7 MB less at 100,000 images.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobKey([u8; 32]);

impl JobKey {
    /// The 64 hex digits (what the store and reports hold).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobKey({})", self.hex())
    }
}

/// A key equals its hex digits, in either case.
impl PartialEq<str> for JobKey {
    fn eq(&self, hex: &str) -> bool {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex, &mut bytes).is_ok() && bytes == self.0
    }
}

impl PartialEq<String> for JobKey {
    fn eq(&self, hex: &String) -> bool {
        *self == *hex.as_str()
    }
}

impl PartialEq<JobKey> for String {
    fn eq(&self, key: &JobKey) -> bool {
        key == self
    }
}

/// Job key of an input, a canonical body (without `input`) and an output path.
pub fn job_key(input: &Input, canonical_body: &str, output_rel: &Path) -> JobKey {
    let mut hasher = Sha256::new();
    hasher.update(input.identity().as_bytes());
    hasher.update([0u8]);
    hasher.update(canonical_body.as_bytes());
    hasher.update([0u8]);
    hasher.update(output_rel.to_string_lossy().as_bytes());
    JobKey(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_is_sorted() {
        assert_eq!(
            canonical_json(&json!({"b": 1, "a": {"d": [1, {"f": 1, "e": 2}], "c": null}})),
            r#"{"a":{"c":null,"d":[1,{"e":2,"f":1}]},"b":1}"#
        );
    }

    #[test]
    fn a_key_is_its_hex_digits_wherever_it_is_shown_or_compared() {
        let input = Input::Remote("https://cdn.example.com/a.jpg".into());
        let key = job_key(&input, "{}", Path::new("m/a.jpg"));
        let hex = key.hex();
        assert_eq!(hex.len(), 64);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(key.to_string(), hex);
        assert_eq!(key, hex);
        assert_eq!(hex, key);
        assert!(key == *hex.as_str());
        assert!(key == *hex.to_uppercase().as_str(), "either case");
        assert!(
            key != *hex[..62].to_owned().as_str(),
            "a prefix is not the key"
        );
        assert!(key != *"not hex", "not hex at all");
        let other = job_key(&input, "{}", Path::new("m/b.jpg"));
        assert_ne!(key, other);
        assert!(other != hex);
    }
}
