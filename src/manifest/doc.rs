//! A manifest's text turned into data in one pass, for YAML and JSON alike, with the
//! top-level `images` list kept compact.
//!
//! The data is built straight from the parser's events by one serde seed (no intermediate
//! `serde_yaml::Value` tree), and an image entry that is only `{input: "…"}` is kept as its
//! string instead of a one-entry map: a `serde_json::Map` costs ≈ 600 bytes even for one key,
//! so a 100,000-image manifest held 60 MB of maps before validation started. Any other entry
//! is kept as its JSON text until the validator reads it (100,000 entries with operations of
//! their own held 126 MB of maps; their texts hold about a tenth). The validator sees the same
//! entries either way ([`Item::to_value`]).
//!
//! Every value below the root is built by `yaml::value`'s seed, under the same rules as a
//! config (duplicate keys, tags and non-finite numbers refused) and the manifest's bounds:
//! [`yaml::MAX_DEPTH`] levels, and no list or mapping (`images` first) longer than
//! `limits.max_images`, counted as the entries stream in. JSON streams into the seed; YAML is
//! screened by `yaml::parse_with` first (aliases can expand past any bound on the text), then
//! read one event at a time by `yaml::stream`.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::yaml::value::{Bounds, Data, Key, Rules, Syntax, duplicate};
use crate::yaml::{self, ParseError};

/// A parsed manifest: the root without its `images` list when that is a list, and the list.
#[derive(Debug)]
pub struct Doc {
    pub root: Value,
    /// The top-level `images` when it is a list; `None` when absent or of another kind (then
    /// the value, if any, stays in `root`).
    pub images: Option<Vec<Item>>,
}

/// One entry of `images`.
#[derive(Debug)]
pub enum Item {
    /// `{input: "…"}` and nothing else: only the string is kept.
    Input(String),
    /// Any other entry, as written, kept as its JSON text ([`Item::other`]).
    Other(Box<str>),
}

impl Item {
    /// Any entry but `{input: "…"}`, kept as its JSON text. (Object keys come back sorted,
    /// as a parsed map holds them anyway; numbers come back exactly: serde_json's
    /// `float_roundtrip`.)
    pub fn other(value: &Value) -> Item {
        Item::Other(value.to_string().into_boxed_str())
    }

    /// The entry as the document wrote it (a one-key map is rebuilt for `Input`).
    pub fn to_value(&self) -> Value {
        match self {
            Item::Input(input) => {
                let mut map = Map::new();
                map.insert("input".to_owned(), Value::String(input.clone()));
                Value::Object(map)
            }
            // Written by `other` from a value, so it always reads back.
            Item::Other(text) => serde_json::from_str(text).unwrap_or_default(),
        }
    }
}

/// Parses a manifest's text (a BOM is skipped) into a [`Doc`] within `bounds`.
pub fn parse(text: &str, syntax: Syntax, bounds: &Bounds) -> Result<Doc, ParseError> {
    match syntax {
        Syntax::Yaml => yaml::parse_with(text, bounds, |de, rules| Top { rules }.deserialize(de)),
        Syntax::Json => parse_json(yaml::strip_bom(text), bounds),
    }
}

/// JSON streams straight into the seed; trailing data is refused.
fn parse_json(text: &str, bounds: &Bounds) -> Result<Doc, ParseError> {
    let rules = Rules::new(Syntax::Json, *bounds);
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Top { rules: &rules }
        .deserialize(&mut de)
        .and_then(|doc| de.end().map(|()| doc));
    parsed.map_err(|err| {
        let line = Some(err.line()).filter(|l| *l > 0);
        match rules.take_refusal() {
            Some(refusal) => yaml::refused(refusal, line, line, bounds),
            None => {
                // The line is reported on its own; serde_json appends it to the text too.
                let message = err.to_string();
                let message = match message.find(" at line ") {
                    Some(idx) => message[..idx].to_owned(),
                    None => message,
                };
                ParseError::invalid(line, message)
            }
        }
    })
}

/// The root: a mapping gets its `images` list split off; anything else is kept whole.
struct Top<'r> {
    rules: &'r Rules,
}

impl Top<'_> {
    fn data(&self, depth: usize) -> Data<'_> {
        Data {
            rules: self.rules,
            depth,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = Doc;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Doc, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = Doc;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a manifest")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
        let depth = self.rules.enter(0)?;
        let mut root = Map::new();
        let mut images = None;
        let mut n_keys = 0;
        while let Some(key) = map.next_key_seed(Key)? {
            if root.contains_key(&key) || (key == "images" && images.is_some()) {
                return Err(duplicate(self.rules.syntax, &key));
            }
            n_keys += 1;
            self.rules.count(n_keys, depth)?;
            self.rules.set_top_key(&key);
            if key == "images" {
                match map.next_value_seed(Images { rules: self.rules })? {
                    Field::List(items) => images = Some(items),
                    Field::Other(value) => {
                        root.insert(key, value);
                    }
                }
            } else {
                let value = map.next_value_seed(self.data(depth))?;
                root.insert(key, value);
            }
        }
        Ok(Doc {
            root: Value::Object(root),
            images,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Doc, A::Error> {
        whole(self.data(0).visit_seq(seq)?)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Doc, E> {
        whole(self.data(0).visit_bool(v)?)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Doc, E> {
        whole(self.data(0).visit_i64(v)?)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Doc, E> {
        whole(self.data(0).visit_u64(v)?)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Doc, E> {
        whole(self.data(0).visit_f64(v)?)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Doc, E> {
        whole(Value::String(v.to_owned()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Doc, E> {
        whole(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Doc, E> {
        whole(Value::Null)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Doc, A::Error> {
        whole(self.data(0).visit_enum(data)?)
    }
}

fn whole<E>(root: Value) -> Result<Doc, E> {
    Ok(Doc { root, images: None })
}

/// The value of the top-level `images` key.
enum Field {
    List(Vec<Item>),
    Other(Value),
}

/// The value of the top-level `images` key: a list is counted as it streams in.
struct Images<'r> {
    rules: &'r Rules,
}

impl<'de> DeserializeSeed<'de> for Images<'_> {
    type Value = Field;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Field, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Images<'_> {
    type Value = Field;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of images")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
        let depth = self.rules.enter(1)?;
        let max = self.rules.bounds.max_entries_at(depth, "images");
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(max));
        let item = Data {
            rules: self.rules,
            depth,
        };
        while let Some(value) = seq.next_element_seed(item)? {
            items.push(compact(value));
            self.rules.count(items.len(), depth)?;
        }
        Ok(Field::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field, A::Error> {
        Ok(Field::Other(
            Data {
                rules: self.rules,
                depth: 1,
            }
            .visit_map(map)?,
        ))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Field, E> {
        Ok(Field::Other(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Field, E> {
        Ok(Field::Other(Value::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Field, E> {
        Ok(Field::Other(Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Field, E> {
        Ok(Field::Other(
            Data {
                rules: self.rules,
                depth: 1,
            }
            .visit_f64(v)?,
        ))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
        Ok(Field::Other(Value::String(v.to_owned())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Field, E> {
        Ok(Field::Other(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Field, E> {
        Ok(Field::Other(Value::Null))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Field, A::Error> {
        Ok(Field::Other(
            Data {
                rules: self.rules,
                depth: 1,
            }
            .visit_enum(data)?,
        ))
    }
}

/// `{input: "…"}` alone becomes [`Item::Input`]; the one-key map is dropped right away.
fn compact(value: Value) -> Item {
    match value {
        Value::Object(mut map)
            if map.len() == 1 && map.get("input").is_some_and(Value::is_string) =>
        {
            match map.remove("input") {
                Some(Value::String(input)) => Item::Input(input),
                _ => unreachable!("checked above: one string `input`"),
            }
        }
        other => Item::other(&other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::value::LongList;

    const BOUNDS: Bounds = Bounds {
        max_depth: yaml::MAX_DEPTH,
        max_entries: 10,
        long_list: Some(LongList {
            key: "images",
            max_entries: 4,
        }),
    };

    fn parse_yaml(text: &str) -> Result<Doc, ParseError> {
        parse(text, Syntax::Yaml, &BOUNDS)
    }

    fn parse_json(text: &str) -> Result<Doc, ParseError> {
        parse(text, Syntax::Json, &BOUNDS)
    }

    fn yaml(text: &str) -> Doc {
        parse_yaml(text).expect("valid YAML")
    }

    #[test]
    fn input_only_entries_are_kept_as_strings_and_others_whole() {
        let doc = yaml(
            "operations: { resizing: { width: 32 } }\n\
             images:\n\
             \x20 - input: a.jpg\n\
             \x20 - input: b.jpg\n\
             \x20   output: b.webp\n\
             \x20 - c.jpg\n\
             \x20 - input: 7\n",
        );
        let images = doc.images.expect("a list");
        assert!(matches!(&images[0], Item::Input(s) if s == "a.jpg"));
        assert!(matches!(&images[1].to_value(), Value::Object(m) if m.len() == 2));
        assert!(matches!(&images[2].to_value(), Value::String(s) if s == "c.jpg"));
        assert!(
            matches!(&images[3], Item::Other(_))
                && matches!(images[3].to_value(), Value::Object(_)),
            "not a string input"
        );
        assert_eq!(
            images[0].to_value(),
            serde_json::json!({"input": "a.jpg"}),
            "the validator sees the entry as written"
        );
        assert!(doc.root.get("images").is_none());
        assert_eq!(doc.root["operations"]["resizing"]["width"], 32);
    }

    #[test]
    fn images_of_another_kind_stay_in_the_root() {
        let doc = yaml("images: { a: 1 }\n");
        assert!(doc.images.is_none());
        assert_eq!(doc.root["images"]["a"], 1);
    }

    #[test]
    fn yaml_and_json_refuse_duplicate_keys_anywhere() {
        let err = parse_yaml("images:\n  - input: a\n    input: b\n").unwrap_err();
        assert!(
            err.message.contains("duplicate entry with key \"input\""),
            "{err:?}"
        );
        let err = parse_yaml("images: []\nimages: []\n").unwrap_err();
        assert!(
            err.message.contains("duplicate entry with key \"images\""),
            "{err:?}"
        );
        let err = parse_json(r#"{"images": [], "images": []}"#).unwrap_err();
        assert!(err.message.contains("duplicate key `images`"), "{err:?}");
    }

    #[test]
    fn tags_non_finite_numbers_and_complex_keys_are_refused() {
        let err = parse_yaml("images:\n  - input: !env FOO\n").unwrap_err();
        assert!(err.message.contains("YAML tags like `!env`"), "{err:?}");
        let err = parse_yaml("output: { quality: .nan }\nimages: []\n").unwrap_err();
        assert!(
            err.message.contains("the number `.nan` is not finite"),
            "{err:?}"
        );
        let err = parse_yaml("? [a, b]\n: 1\n").unwrap_err();
        assert!(
            err.message
                .contains("keys must be plain strings, found a list"),
            "{err:?}"
        );
        let doc = yaml("1: one\ntrue: yes\n");
        assert_eq!(doc.root["1"], "one");
        assert_eq!(doc.root["true"], "yes");
    }

    #[test]
    fn json_refuses_trailing_data() {
        assert!(parse_json(r#"{"images": []} {}"#).is_err());
    }

    #[test]
    fn images_are_counted_as_they_stream_in_yaml_and_json() {
        assert_eq!(
            yaml("images: [a, b, c, d]\n").images.map(|i| i.len()),
            Some(4)
        );
        // The fifth entry is refused before the syntax error after it is read.
        for (text, syntax) in [
            (
                "x: 1\nimages:\n  - a\n  - b\n  - c\n  - d\n  - e\n  - ]]",
                Syntax::Yaml,
            ),
            (
                "{\"x\": 1,\n \"images\": [\"a\", \"b\", \"c\", \"d\",\n \"e\", ]]",
                Syntax::Json,
            ),
        ] {
            let err = parse(text, syntax, &BOUNDS).unwrap_err();
            match err.kind {
                yaml::ParseErrorKind::TooManyEntries {
                    within,
                    is_top_value: true,
                    entry_line,
                    max: 4,
                } => {
                    assert_eq!(within, "images", "{syntax:?}");
                    assert!(entry_line.is_some(), "{syntax:?}");
                }
                other => panic!("{syntax:?}: {other:?} {}", err.message),
            }
        }
    }

    #[test]
    fn nesting_past_the_limit_is_refused_in_yaml_and_json() {
        let depth = yaml::MAX_DEPTH;
        // The root mapping and `images` are two levels.
        let fits = format!(
            "{{\"images\": {}1{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        );
        assert!(parse_json(&fits).is_ok());
        assert!(parse_yaml(&fits).is_ok());
        let deep = format!("{{\"images\":\n{}", "[".repeat(depth));
        for syntax in [Syntax::Yaml, Syntax::Json] {
            let err = parse(&deep, syntax, &BOUNDS).unwrap_err();
            assert!(
                err.message.contains("nested deeper than 64 levels"),
                "{syntax:?}: {err:?}"
            );
            assert_eq!(err.line, Some(2), "{syntax:?}");
        }
    }
}
