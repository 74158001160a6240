//! The job key (README "Incremental"): the hex sha256 of the input's identity, the canonical JSON of the
//! request body and the output path, so an identical edit is recognised whatever the manifest.

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

/// Job key of an input, a canonical body (without `input`) and an output path.
pub fn job_key(input: &Input, canonical_body: &str, output_rel: &Path) -> String {
    let mut hasher = Sha256::new();
    hasher.update(input.identity().as_bytes());
    hasher.update([0u8]);
    hasher.update(canonical_body.as_bytes());
    hasher.update([0u8]);
    hasher.update(output_rel.to_string_lossy().as_bytes());
    hex::encode(hasher.finalize())
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
}
