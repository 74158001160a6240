//! The one serde seed that turns YAML or JSON into a `serde_json::Value` under the rules shared
//! by configs, folder recipes and manifests, built straight from the parser's events.
//!
//! The rules: duplicate keys, YAML tags and non-finite numbers are refused; number and boolean
//! keys become their text; no value nests deeper than [`Bounds::max_depth`] and no list or
//! mapping holds more entries than [`Bounds::max_entries_at`] allows. Both are checked as the
//! value is built, so a refused document costs no more than the part read so far. A bound that
//! refuses records a [`Refusal`] in the [`Rules`], because serde's error type carries only text.

use std::cell::{Cell, RefCell};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Which parser's wording the duplicate-key error follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    Yaml,
    Json,
}

/// Fixed bounds on the shape of a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Most lists and mappings open at once (the root counts as one).
    pub max_depth: usize,
    /// Most entries in one list or mapping, but for [`Bounds::long_list`].
    pub max_entries: usize,
    /// The value of one top-level key may have a bound of its own (a manifest's `images`).
    pub long_list: Option<LongList>,
}

/// A top-level key whose value has its own entry bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongList {
    pub key: &'static str,
    pub max_entries: usize,
}

impl Bounds {
    /// Most entries of a list or mapping at `depth` (the root is 1) under the top-level key
    /// `top_key`.
    pub fn max_entries_at(&self, depth: usize, top_key: &str) -> usize {
        match self.long_list {
            Some(long) if depth == 2 && top_key == long.key => long.max_entries,
            _ => self.max_entries,
        }
    }
}

/// Why a bound refused a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A list or mapping opened below [`Bounds::max_depth`] others.
    TooDeep,
    /// A list or mapping got more than `max` entries.
    TooManyEntries {
        /// The top-level key it is under (empty when it is the root itself).
        within: String,
        /// Whether it is the value of that key itself (`images: [...]`), not one nested in it.
        is_top_value: bool,
        max: usize,
    },
}

/// The rules of one deserialization, shared by every seed of it.
pub struct Rules {
    pub syntax: Syntax,
    pub bounds: Bounds,
    /// The top-level key whose value is being built, for [`Refusal::TooManyEntries`].
    top_key: RefCell<String>,
    /// Set when a bound refused: the error serde returns is only text.
    refusal: Cell<Option<Refusal>>,
}

impl Rules {
    pub fn new(syntax: Syntax, bounds: Bounds) -> Rules {
        Rules {
            syntax,
            bounds,
            top_key: RefCell::new(String::new()),
            refusal: Cell::new(None),
        }
    }

    /// The bound that refused the document, if one did.
    pub fn take_refusal(&self) -> Option<Refusal> {
        self.refusal.take()
    }

    /// Notes the top-level key whose value comes next.
    pub fn set_top_key(&self, key: &str) {
        let mut top = self.top_key.borrow_mut();
        top.clear();
        top.push_str(key);
    }

    /// Opens a list or mapping below `depth` open ones; the new depth, or the refusal.
    pub fn enter<E: de::Error>(&self, depth: usize) -> Result<usize, E> {
        let depth = depth + 1;
        if depth > self.bounds.max_depth {
            return Err(self.refuse(Refusal::TooDeep));
        }
        Ok(depth)
    }

    /// Checks the entry count `n` of a list or mapping at `depth`.
    pub fn count<E: de::Error>(&self, n: usize, depth: usize) -> Result<(), E> {
        let top_key = self.top_key.borrow();
        let within = if depth <= 1 { "" } else { top_key.as_str() };
        let max = self.bounds.max_entries_at(depth, within);
        if n <= max {
            return Ok(());
        }
        let within = within.to_owned();
        drop(top_key);
        Err(self.refuse(Refusal::TooManyEntries {
            within,
            is_top_value: depth == 2,
            max,
        }))
    }

    fn refuse<E: de::Error>(&self, refusal: Refusal) -> E {
        let text = match &refusal {
            Refusal::TooDeep => format!("nested deeper than {} levels", self.bounds.max_depth),
            Refusal::TooManyEntries { max, .. } => format!("more than {max} entries"),
        };
        self.refusal.set(Some(refusal));
        E::custom(text)
    }
}

/// Any value, at `depth` open lists and mappings.
#[derive(Clone, Copy)]
pub struct Data<'r> {
    pub rules: &'r Rules,
    pub depth: usize,
}

impl<'de> DeserializeSeed<'de> for Data<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Data<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    // Integers past 64 bits: told as such ("invalid type: integer … as u128" said nothing).
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Err(E::custom(format_args!(
            "the number `{v}` is too large (integers go up to 18446744073709551615); write a smaller one, or quote it if it is text"
        )))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Err(E::custom(format_args!(
            "the number `{v}` is too large (integers go down to -9223372036854775808); write a smaller one, or quote it if it is text"
        )))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format_args!("the number `{}` is not finite", yaml_float(v))))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.rules.enter(self.depth)?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        let item = Data {
            rules: self.rules,
            depth,
        };
        while let Some(value) = seq.next_element_seed(item)? {
            items.push(value);
            self.rules.count(items.len(), depth)?;
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.rules.enter(self.depth)?;
        let mut out = Map::new();
        let value_seed = Data {
            rules: self.rules,
            depth,
        };
        while let Some(key) = map.next_key_seed(Key)? {
            if out.contains_key(&key) {
                return Err(duplicate(self.rules.syntax, &key));
            }
            if depth == 1 {
                self.rules.set_top_key(&key);
            }
            let value = map.next_value_seed(value_seed)?;
            out.insert(key, value);
            self.rules.count(out.len(), depth)?;
        }
        Ok(Value::Object(out))
    }

    /// The reader hands a value with a YAML tag (`!env FOO`) over as an enum.
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, _rest): (String, _) = data.variant()?;
        let tag = if tag.starts_with('!') {
            tag
        } else {
            format!("!{tag}")
        };
        Err(de::Error::custom(format_args!(
            "YAML tags like `{tag}` are not supported"
        )))
    }
}

/// A mapping key: strings as they are, numbers and booleans as their text.
pub struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<String, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a plain string key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(yaml_float(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Err(not_a_key("null"))
    }
    fn visit_none<E: de::Error>(self) -> Result<String, E> {
        Err(not_a_key("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(not_a_key("a list"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(not_a_key("a mapping"))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(not_a_key("a tagged value"))
    }
}

fn not_a_key<E: de::Error>(found: &str) -> E {
    E::custom(format_args!(
        "mapping keys must be plain strings, found {found}"
    ))
}

/// The error for a key given twice, worded as the syntax's own parser would.
pub fn duplicate<E: de::Error>(syntax: Syntax, key: &str) -> E {
    match syntax {
        Syntax::Yaml => E::custom(format_args!("duplicate entry with key {key:?}")),
        Syntax::Json => E::custom(format_args!("duplicate key `{key}`")),
    }
}

/// A float as YAML writes it: `.nan`, `.inf`, `-.inf`, or its decimal text.
fn yaml_float(v: f64) -> String {
    if v.is_nan() {
        ".nan".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { ".inf" } else { "-.inf" }.to_owned()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Bounds = Bounds {
        max_depth: 3,
        max_entries: 2,
        long_list: Some(LongList {
            key: "long",
            max_entries: 4,
        }),
    };

    fn json(text: &str) -> (Result<Value, serde_json::Error>, Option<Refusal>) {
        let rules = Rules::new(Syntax::Json, SMALL);
        let mut de = serde_json::Deserializer::from_str(text);
        let res = Data {
            rules: &rules,
            depth: 0,
        }
        .deserialize(&mut de);
        (res, rules.take_refusal())
    }

    /// A YAML integer past 64 bits is told as too large, not as "invalid type … as u128".
    #[test]
    fn an_integer_past_64_bits_is_told_too_large() {
        let bounds = Bounds {
            max_depth: 8,
            max_entries: 8,
            long_list: None,
        };
        for text in [
            "width: 99999999999999999999999\n",
            "width: -99999999999999999999999\n",
        ] {
            let err = crate::yaml::parse(text, &bounds).unwrap_err().message;
            assert!(err.contains("is too large"), "{err}");
            assert!(!err.contains("u128") && !err.contains("i128"), "{err}");
        }
    }

    #[test]
    fn depth_is_counted_in_open_collections() {
        assert!(json("[[[1]]]").0.is_ok(), "three levels are allowed");
        let (res, refusal) = json("[[[[1]]]]");
        assert_eq!(refusal, Some(Refusal::TooDeep));
        let err = res.unwrap_err();
        assert!(
            err.to_string().contains("nested deeper than 3 levels"),
            "{err}"
        );
        assert_eq!(err.line(), 1);
    }

    #[test]
    fn entries_are_counted_as_they_stream() {
        assert!(json(r#"{"a": [1, 2], "b": {"x": 1, "y": 2}}"#).0.is_ok());
        let (res, refusal) = json("[1, 2, 3, tail that is never read");
        assert!(res.is_err());
        assert_eq!(
            refusal,
            Some(Refusal::TooManyEntries {
                within: String::new(),
                is_top_value: false,
                max: 2,
            }),
            "refused at the third entry, before the syntax error after it"
        );
    }

    #[test]
    fn the_long_list_has_its_own_bound_and_only_at_the_top() {
        assert!(json(r#"{"long": [1, 2, 3, 4]}"#).0.is_ok());
        let (_, refusal) = json(r#"{"long": [1, 2, 3, 4, 5]}"#);
        assert_eq!(
            refusal,
            Some(Refusal::TooManyEntries {
                within: "long".into(),
                is_top_value: true,
                max: 4,
            })
        );
        let (_, refusal) = json(r#"{"long": {"x": [1, 2, 3]}}"#);
        assert!(
            matches!(refusal, Some(Refusal::TooManyEntries { max: 2, .. })),
            "{refusal:?}"
        );
    }
}
