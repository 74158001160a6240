//! A manifest's text turned into data in one pass, for YAML and JSON alike, with the
//! top-level `images` list kept compact.
//!
//! The data is built straight from the parser's events by one serde seed (no intermediate
//! `serde_yaml::Value` tree), and an image entry that is only `{input: "…"}` is kept as its
//! string instead of a one-entry map: a `serde_json::Map` costs ≈ 600 bytes even for one key,
//! so a 100,000-image manifest held 60 MB of maps before validation started. The validator
//! sees the same entries either way ([`Item::to_value`]).
//!
//! The seed enforces what `yaml::parse` does for configs: duplicate keys, tags and non-finite
//! numbers are refused; number and boolean keys become their text.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

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
    /// Any other entry, as written.
    Other(Value),
}

impl Item {
    /// The entry as the document wrote it (a one-key map is rebuilt for `Input`).
    pub fn to_value(&self) -> std::borrow::Cow<'_, Value> {
        match self {
            Item::Input(input) => {
                let mut map = Map::new();
                map.insert("input".to_owned(), Value::String(input.clone()));
                std::borrow::Cow::Owned(Value::Object(map))
            }
            Item::Other(value) => std::borrow::Cow::Borrowed(value),
        }
    }
}

/// Which parser's wording the duplicate-key error follows.
#[derive(Clone, Copy)]
pub enum Syntax {
    Yaml,
    Json,
}

/// Parses YAML text (BOM already stripped, aliases already checked) into a [`Doc`].
pub fn parse_yaml(text: &str) -> Result<Doc, serde_yaml::Error> {
    let de = serde_yaml::Deserializer::from_str(text);
    Top(Syntax::Yaml).deserialize(de)
}

/// Parses JSON text (BOM already stripped) into a [`Doc`], refusing trailing data.
pub fn parse_json(text: &str) -> Result<Doc, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let doc = Top(Syntax::Json).deserialize(&mut de)?;
    de.end()?;
    Ok(doc)
}

/// The root: a mapping gets its `images` list split off; anything else is kept whole.
struct Top(Syntax);

impl<'de> DeserializeSeed<'de> for Top {
    type Value = Doc;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Doc, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top {
    type Value = Doc;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a manifest")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
        let mut root = Map::new();
        let mut images = None;
        while let Some(key) = map.next_key_seed(Key)? {
            if root.contains_key(&key) || (key == "images" && images.is_some()) {
                return Err(duplicate(self.0, &key));
            }
            if key == "images" {
                match map.next_value_seed(Images(self.0))? {
                    Field::List(items) => images = Some(items),
                    Field::Other(value) => {
                        root.insert(key, value);
                    }
                }
            } else {
                let value = map.next_value_seed(Data(self.0))?;
                root.insert(key, value);
            }
        }
        Ok(Doc {
            root: Value::Object(root),
            images,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Doc, A::Error> {
        whole(Data(self.0).visit_seq(seq)?)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Doc, E> {
        whole(Data(self.0).visit_bool(v)?)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Doc, E> {
        whole(Data(self.0).visit_i64(v)?)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Doc, E> {
        whole(Data(self.0).visit_u64(v)?)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Doc, E> {
        whole(Data(self.0).visit_f64(v)?)
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
        whole(Data(self.0).visit_enum(data)?)
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

struct Images(Syntax);

impl<'de> DeserializeSeed<'de> for Images {
    type Value = Field;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Field, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Images {
    type Value = Field;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of images")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(value) = seq.next_element_seed(Data(self.0))? {
            items.push(compact(value));
        }
        Ok(Field::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field, A::Error> {
        Ok(Field::Other(Data(self.0).visit_map(map)?))
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
        Ok(Field::Other(Data(self.0).visit_f64(v)?))
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
        Ok(Field::Other(Data(self.0).visit_enum(data)?))
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
        other => Item::Other(other),
    }
}

/// Any value below the root.
struct Data(Syntax);

impl<'de> DeserializeSeed<'de> for Data {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Data {
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
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(Data(self.0))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Key)? {
            if out.contains_key(&key) {
                return Err(duplicate(self.0, &key));
            }
            let value = map.next_value_seed(Data(self.0))?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }

    /// serde_norway hands a value with a YAML tag (`!env FOO`) over as an enum.
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
struct Key;

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

fn duplicate<E: de::Error>(syntax: Syntax, key: &str) -> E {
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
        assert!(matches!(&images[1], Item::Other(Value::Object(m)) if m.len() == 2));
        assert!(matches!(&images[2], Item::Other(Value::String(s)) if s == "c.jpg"));
        assert!(
            matches!(&images[3], Item::Other(Value::Object(_))),
            "not a string input"
        );
        assert_eq!(
            *images[0].to_value(),
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
            err.to_string()
                .contains("duplicate entry with key \"input\""),
            "{err}"
        );
        let err = parse_yaml("images: []\nimages: []\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("duplicate entry with key \"images\""),
            "{err}"
        );
        let err = parse_json(r#"{"images": [], "images": []}"#).unwrap_err();
        assert!(err.to_string().contains("duplicate key `images`"), "{err}");
    }

    #[test]
    fn tags_non_finite_numbers_and_complex_keys_are_refused() {
        let err = parse_yaml("images:\n  - input: !env FOO\n").unwrap_err();
        assert!(err.to_string().contains("YAML tags like `!env`"), "{err}");
        let err = parse_yaml("output: { quality: .nan }\nimages: []\n").unwrap_err();
        assert!(
            err.to_string().contains("the number `.nan` is not finite"),
            "{err}"
        );
        let err = parse_yaml("? [a, b]\n: 1\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("keys must be plain strings, found a list"),
            "{err}"
        );
        let doc = yaml("1: one\ntrue: yes\n");
        assert_eq!(doc.root["1"], "one");
        assert_eq!(doc.root["true"], "yes");
    }

    #[test]
    fn json_refuses_trailing_data() {
        assert!(parse_json(r#"{"images": []} {}"#).is_err());
    }
}
