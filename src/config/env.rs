//! Environment overrides: `CLAID_HOTFOLDER__SECTION__KEY=value` layered over the parsed file,
//! so a systemd drop-in or a container can change one key without editing the YAML.

use serde_json::Value;

use crate::config::{BOUNDS, ENV_PREFIX};
use crate::yaml;

/// Layers the `CLAID_HOTFOLDER__*` variables of `env` over `root`; returns (dotted key, var).
pub fn apply_env(
    root: &mut Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let mut applied = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let parts: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if parts.iter().any(String::is_empty) {
            continue;
        }
        let value = yaml::parse(&raw, &BOUNDS).unwrap_or_else(|_| Value::String(raw.clone()));
        if !root.is_object() {
            *root = Value::Object(Default::default());
        }
        let mut node = &mut *root;
        for part in &parts[..parts.len() - 1] {
            let Value::Object(map) = node else { break };
            let child = map
                .entry(part.clone())
                .or_insert_with(|| Value::Object(Default::default()));
            if !child.is_object() {
                *child = Value::Object(Default::default());
            }
            node = child;
        }
        if let (Value::Object(map), Some(last)) = (node, parts.last()) {
            match map.get_mut(last) {
                // A mapping over a mapping sets the keys it names and keeps the file's others
                // (`…__API__POLL='{ min: 2s }'` leaves `give_up_after` as the file has it; it
                // replaced the whole mapping, and `…__API='{ max_in_flight: 8 }'` dropped the
                // file's `base_url` for Claid's own).
                Some(existing @ Value::Object(_)) if value.is_object() => merge(existing, value),
                _ => {
                    map.insert(last.clone(), value);
                }
            }
        }
        applied.push((parts.join("."), name));
    }
    applied
}

/// Sets every key of `over` in `base`, recursively for mappings in both.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing @ Value::Object(_)) if value.is_object() => {
                        merge(existing, value)
                    }
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}
