//! The deep merge of profile → manifest → image (README "How it works"): objects merge key by key,
//! recursively; scalars and lists replace; an explicit `null` removes the key.

use serde_json::Value;

/// Merges `over` into `base`.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match value {
                    Value::Null => {
                        base.remove(key);
                    }
                    Value::Object(_) => match base.get_mut(key) {
                        Some(existing @ Value::Object(_)) => merge(existing, value),
                        _ => {
                            base.insert(key.clone(), without_nulls(value));
                        }
                    },
                    _ => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, over) => *base = without_nulls(over),
    }
}

/// Merge into an optional base (output options may be unset, or a string shorthand).
pub fn merge_opt(base: &mut Option<Value>, over: &Value) {
    match base {
        Some(existing) => merge(existing, over),
        None => *base = Some(without_nulls(over)),
    }
}

/// A copy with `null` members of objects removed (a null removes; it never stays in a body).
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_rules() {
        let mut base = json!({"a": {"x": 1, "y": 2}, "b": [1, 2], "c": "s"});
        merge(
            &mut base,
            &json!({"a": {"y": null, "z": 3}, "b": [3], "c": {"k": null, "v": 1}}),
        );
        assert_eq!(
            base,
            json!({"a": {"x": 1, "z": 3}, "b": [3], "c": {"v": 1}})
        );
    }
}
