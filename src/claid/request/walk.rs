//! How an edit request body is walked: the [`Validator`] that collects every [`FieldError`]
//! by dotted path, and its checks of one value (an object's keys, booleans, numbers in a
//! range, strings, enumerations, tagged unions, URIs). The rules for each part of the body
//! live beside it (`operations`, `output`), the grammars of string values in `grammar`.

use serde_json::{Map, Value};

use crate::claid::request::grammar::check_uri;
use crate::claid::request::{FieldError, MAX_URI_LEN};

/// Collects problems while walking the JSON.
#[derive(Default)]
pub(super) struct Validator {
    pub(super) errors: Vec<FieldError>,
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Validator {
    pub(super) fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// Checks that `value` is an object whose keys are all in `allowed` (+ `ignored`).
    pub(super) fn object<'a>(
        &mut self,
        value: &'a Value,
        path: &str,
        allowed: &[&str],
        ignored: &[&str],
    ) -> Option<&'a Map<String, Value>> {
        let Some(map) = value.as_object() else {
            let at = if path.is_empty() { "body" } else { path };
            self.err(at, format!("must be an object, got {}", type_name(value)));
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) && !ignored.contains(&key.as_str()) {
                self.err(
                    &join(path, key),
                    format!("unknown field; allowed fields: {}", allowed.join(", ")),
                );
            }
        }
        Some(map)
    }

    pub(super) fn boolean(&mut self, value: &Value, path: &str) -> Option<bool> {
        match value.as_bool() {
            Some(b) => Some(b),
            None => {
                self.err(
                    path,
                    format!("must be true or false, got {}", type_name(value)),
                );
                None
            }
        }
    }

    pub(super) fn int_in(&mut self, value: &Value, path: &str, min: i64, max: i64) -> Option<i64> {
        match value.as_i64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.err(path, format!("must be an integer in {min}..{max}, got {n}"));
                None
            }
            None => {
                let got = if value.is_number() {
                    "a non-integer or out-of-range number"
                } else {
                    type_name(value)
                };
                self.err(
                    path,
                    format!("must be an integer in {min}..{max}, got {got}"),
                );
                None
            }
        }
    }

    pub(super) fn number_in(
        &mut self,
        value: &Value,
        path: &str,
        min: f64,
        max: f64,
    ) -> Option<f64> {
        match value.as_f64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.err(path, format!("must be a number in {min}..{max}, got {n}"));
                None
            }
            None => {
                self.err(
                    path,
                    format!("must be a number in {min}..{max}, got {}", type_name(value)),
                );
                None
            }
        }
    }

    pub(super) fn string<'a>(
        &mut self,
        value: &'a Value,
        path: &str,
        min: usize,
        max: usize,
    ) -> Option<&'a str> {
        let Some(s) = value.as_str() else {
            self.err(
                path,
                format!(
                    "must be a string of {min}..{max} characters, got {}",
                    type_name(value)
                ),
            );
            return None;
        };
        let n = s.chars().count();
        if n < min || n > max {
            self.err(
                path,
                format!("must be {min}..{max} characters long, got {n}"),
            );
            return None;
        }
        Some(s)
    }

    /// A string enum: returns the index of the matching name.
    pub(super) fn enumeration(
        &mut self,
        value: &Value,
        path: &str,
        names: &[&str],
    ) -> Option<usize> {
        let found = value
            .as_str()
            .and_then(|s| names.iter().position(|n| *n == s));
        if found.is_none() {
            let got = match value {
                Value::String(s) => format!("\"{s}\""),
                other => type_name(other).to_owned(),
            };
            self.err(path, format!("must be one of {}, got {got}", quoted(names)));
        }
        found
    }

    /// The `type` of a tagged object (`fit`, `format`, `compression`, ...). When it is missing or
    /// invalid, the other keys are still checked against `all_keys` (the union over variants)
    /// so that unknown fields are reported too.
    pub(super) fn tag(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        names: &[&str],
        all_keys: &[&str],
    ) -> Option<usize> {
        let found = match map.get("type") {
            Some(t) => self.enumeration(t, &join(path, "type"), names),
            None => {
                self.err(
                    &join(path, "type"),
                    format!("required: one of {}", quoted(names)),
                );
                None
            }
        };
        if found.is_none() {
            for key in map.keys().filter(|k| !all_keys.contains(&k.as_str())) {
                self.err(
                    &join(path, key),
                    format!("unknown field; allowed fields: {}", all_keys.join(", ")),
                );
            }
        }
        found
    }

    pub(super) fn uri(&mut self, value: &Value, path: &str) -> Option<String> {
        let s = self.string(value, path, 1, MAX_URI_LEN)?;
        if let Err(why) = check_uri(s) {
            self.err(path, why);
            return None;
        }
        Some(s.to_owned())
    }
}
