//! The YAML reader: a serde `Deserializer` fed by libyaml's event stream one event at a time,
//! so a document's data is built as its text is read and nothing of it is held but its open
//! levels and its anchors.
//!
//! Why not serde_norway's own deserializer: it loads every event of a document into a list
//! before the first value is built (≈ 120 bytes an event, four events an image: 50 MB for a
//! 100,000-image manifest of 4.4 MB, more than everything else the daemon holds). This reader
//! gives the seeds of [`crate::yaml::value`] and the manifest's the same values serde_norway
//! gave them: a plain scalar is read as YAML 1.2's core schema (null, booleans, integers in
//! base 10, 16, 8 and 2, floats, else a string; digits after a leading zero stay a string),
//! the core tags `!!bool`, `!!int`, `!!float`, `!!null` and `!!str` are applied, any other
//! `!tag` reaches the visitor as an enum (which the seeds refuse), an alias replays the
//! events of its anchor, an empty stream is `none`, and a second document is refused.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use libyaml_safer::{EventData, Parser, ScalarStyle};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

/// Why a document could not be read: its text and, when known, its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub message: String,
    pub line: Option<usize>,
    /// Where in the data the error is (`api.limits`, `images[3].input`), when it is about a
    /// value rather than the text.
    pub path: Option<String>,
}

impl Error {
    fn at(message: impl Into<String>, line: usize) -> Error {
        Error {
            message: message.into(),
            line: Some(line),
            path: None,
        }
    }

    /// The error placed at the innermost node being read when it was made: its line, and its
    /// path in the data.
    fn or_at(mut self, line: usize, path: &[Seg]) -> Error {
        if self.line.is_none() && self.path.is_none() {
            self.line = Some(line);
            self.path = Some(render(path));
        }
        self
    }
}

impl fmt::Display for Error {
    /// The message, after the path of the value it is about (`api: duplicate entry …`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path.as_deref() {
            Some(path) if path != "." => write!(f, "{path}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// One step of the path to a value.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
    /// The value of a key that is not a scalar.
    Unknown,
}

/// A path as users read it: `.` for the root, `api.limits`, `images[3].input`, `a.?`.
fn render(path: &[Seg]) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let mut out = String::new();
    for (i, seg) in path.iter().enumerate() {
        match seg {
            Seg::Index(index) => {
                if i == 0 {
                    out.push('.');
                }
                out.push_str(&format!("[{index}]"));
            }
            Seg::Key(_) | Seg::Unknown => {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(match seg {
                    Seg::Key(key) => key,
                    _ => "?",
                });
            }
        }
    }
    out
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Error {
        Error {
            message: msg.to_string(),
            line: None,
            path: None,
        }
    }
}

/// One event of a node, as kept for alias replays.
#[derive(Clone, Debug)]
enum Ev {
    Scalar {
        value: String,
        tag: Option<String>,
        plain: bool,
    },
    SeqStart {
        tag: Option<String>,
    },
    SeqEnd,
    MapStart {
        tag: Option<String>,
    },
    MapEnd,
    /// An alias, resolved when read: where the events of the node its anchor named then are
    /// kept (a range of [`Stream::kept`]).
    Alias(Range<usize>),
    /// The end of the document or of the stream.
    End,
}

#[derive(Clone, Debug)]
struct Node {
    ev: Ev,
    line: usize,
}

/// What the next event is, for the list and mapping readers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    SeqEnd,
    MapEnd,
    End,
    Node,
}

/// An anchored list or mapping still open: its events are being kept from `start` on.
struct Recording {
    name: String,
    start: usize,
    open: usize,
}

/// An alias being replayed: the rest of its range of [`Stream::kept`].
struct Replay {
    pos: usize,
    end: usize,
}

/// The reader of one YAML text (BOM already stripped).
pub struct Stream<'t> {
    parser: Parser<crate::yaml::ScannerInput<'t>>,
    peeked: Option<Node>,
    replays: Vec<Replay>,
    /// The events of every anchored node, once each (nested anchors share them); nothing is
    /// kept while no anchor is open.
    kept: Vec<Node>,
    /// Each anchor name's latest definition, as a range of `kept`.
    anchors: HashMap<String, Range<usize>>,
    recordings: Vec<Recording>,
    documents: usize,
    /// The stream ended before its first document: the root is `none`.
    empty: bool,
    /// The path to the value being read.
    path: Vec<Seg>,
}

impl<'t> Stream<'t> {
    pub fn new(text: &'t str) -> Stream<'t> {
        let mut parser = Parser::new();
        // In chunks: the scanner decodes all it is handed into a buffer of `char`s.
        parser.set_input(crate::yaml::scanner_input(text));
        Stream {
            parser,
            peeked: None,
            replays: Vec::new(),
            kept: Vec::new(),
            anchors: HashMap::new(),
            recordings: Vec::new(),
            documents: 0,
            empty: false,
            path: Vec::new(),
        }
    }

    /// Checks that the text holds nothing after the document the root was read from.
    pub fn finish(&mut self) -> Result<(), Error> {
        if self.empty {
            return Ok(());
        }
        // The end of the document, then the end of the stream (a second document is refused
        // when it starts).
        for _ in 0..2 {
            let node = self.next()?;
            if !matches!(node.ev, Ev::End) {
                return Err(Error::at("expected the end of the document", node.line));
            }
        }
        Ok(())
    }

    /// The next event from the parser, with its alias resolved and kept for open anchors.
    fn read(&mut self) -> Result<Node, Error> {
        loop {
            let event = self.parser.parse().map_err(|err| Error {
                message: err.problem().to_owned(),
                line: err
                    .problem_mark()
                    .map(|mark| usize::try_from(mark.line).unwrap_or(usize::MAX) + 1),
                // About the text, not a value: no path, and no line but the parser's.
                path: Some(".".to_owned()),
            })?;
            let line = usize::try_from(event.start_mark.line)
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            let (ev, anchor) = match event.data {
                EventData::StreamStart { .. } => continue,
                EventData::DocumentStart { .. } => {
                    self.documents += 1;
                    if self.documents > 1 {
                        return Err(Error::at(
                            "deserializing from YAML containing more than one document is not supported",
                            line,
                        ));
                    }
                    continue;
                }
                EventData::DocumentEnd { .. } => (Ev::End, None),
                EventData::StreamEnd => {
                    if self.documents == 0 {
                        self.empty = true;
                    }
                    (Ev::End, None)
                }
                EventData::Alias { anchor } => match self.anchors.get(&anchor) {
                    Some(range) => (Ev::Alias(range.clone()), None),
                    None if self.recordings.iter().any(|r| r.name == anchor) => {
                        return Err(Error::at(
                            format!(
                                "recursion limit exceeded: the alias `*{anchor}` is inside the value its anchor `&{anchor}` names, so the value never ends"
                            ),
                            line,
                        ));
                    }
                    None => return Err(Error::at(format!("unknown anchor `*{anchor}`"), line)),
                },
                EventData::Scalar {
                    anchor,
                    tag,
                    value,
                    style,
                    ..
                } => (
                    Ev::Scalar {
                        value,
                        tag,
                        plain: style == ScalarStyle::Plain,
                    },
                    anchor,
                ),
                EventData::SequenceStart { anchor, tag, .. } => (Ev::SeqStart { tag }, anchor),
                EventData::SequenceEnd => (Ev::SeqEnd, None),
                EventData::MappingStart { anchor, tag, .. } => (Ev::MapStart { tag }, anchor),
                EventData::MappingEnd => (Ev::MapEnd, None),
            };
            let node = Node { ev, line };
            self.record(&node, anchor);
            return Ok(node);
        }
    }

    /// Keeps `node` while an anchor is open or when it has one, and binds its anchor's name at
    /// once (a later `*name` inside the node is refused as endless; one after a redefinition
    /// inside it means the redefinition, as YAML and serde_norway have it).
    fn record(&mut self, node: &Node, anchor: Option<String>) {
        let opens = matches!(node.ev, Ev::SeqStart { .. } | Ev::MapStart { .. });
        let closes = matches!(node.ev, Ev::SeqEnd | Ev::MapEnd);
        if self.recordings.is_empty() && anchor.is_none() {
            return;
        }
        let at = self.kept.len();
        self.kept.push(node.clone());
        for recording in &mut self.recordings {
            if opens {
                recording.open += 1;
            } else if closes {
                recording.open -= 1;
            }
        }
        while self.recordings.last().is_some_and(|r| r.open == 0) {
            if let Some(done) = self.recordings.pop() {
                // A definition of the same name made inside it is the latest: it stays.
                if !self.anchors.contains_key(&done.name) {
                    self.anchors.insert(done.name, done.start..self.kept.len());
                }
            }
        }
        if let Some(name) = anchor {
            self.anchors.remove(&name);
            if opens {
                self.recordings.push(Recording {
                    name,
                    start: at,
                    open: 1,
                });
            } else {
                self.anchors.insert(name, at..at + 1);
            }
        }
    }

    /// The next event of the alias being replayed, dropping replays that have ended.
    fn replayed(&mut self) -> Option<&Node> {
        while let Some(replay) = self.replays.last() {
            if replay.pos < replay.end {
                return self.kept.get(replay.pos);
            }
            self.replays.pop();
        }
        None
    }

    /// What the next event is, without taking it.
    fn peek(&mut self) -> Result<Next, Error> {
        if let Some(node) = self.replayed() {
            return Ok(kind(&node.ev));
        }
        if self.peeked.is_none() {
            self.peeked = Some(self.read()?);
        }
        Ok(self
            .peeked
            .as_ref()
            .map_or(Next::End, |node| kind(&node.ev)))
    }

    /// The text of the next event when it is a scalar (after [`Stream::peek`]).
    /// The line of the node `peek` looked at.
    fn peeked_line(&self) -> Option<usize> {
        match self.replays.last() {
            Some(replay) => self.kept.get(replay.pos),
            None => self.peeked.as_ref(),
        }
        .map(|node| node.line)
    }

    fn peeked_scalar(&self) -> Option<&str> {
        let node = match self.replays.last() {
            Some(replay) => self.kept.get(replay.pos),
            None => self.peeked.as_ref(),
        };
        match node.map(|node| &node.ev) {
            Some(Ev::Scalar { value, .. }) => Some(value),
            _ => None,
        }
    }

    /// Takes the next event: from the alias being replayed, else from the text.
    fn next(&mut self) -> Result<Node, Error> {
        if let Some(node) = self.replayed().cloned() {
            if let Some(replay) = self.replays.last_mut() {
                replay.pos += 1;
            }
            return Ok(node);
        }
        match self.peeked.take() {
            Some(node) => Ok(node),
            None => self.read(),
        }
    }
}

impl Stream<'_> {
    /// Reads the next value with `at` on the path to it (for the errors it may give).
    fn value_at<'de, T: DeserializeSeed<'de>>(
        &mut self,
        at: Seg,
        seed: T,
    ) -> Result<T::Value, Error> {
        self.path.push(at);
        let value = seed.deserialize(&mut *self);
        self.path.pop();
        value
    }

    /// Hands `node` (taken already) and what follows it to `visitor`.
    fn node<'de, V: Visitor<'de>>(&mut self, node: Node, visitor: V) -> Result<V::Value, Error> {
        let tag = match &node.ev {
            Ev::Scalar { tag, .. } | Ev::SeqStart { tag } | Ev::MapStart { tag } => {
                local_tag(tag.as_deref())
            }
            _ => None,
        };
        if let Some(tag) = tag {
            return visitor.visit_enum(Tagged { tag });
        }
        match node.ev {
            Ev::Scalar { value, tag, plain } => scalar(visitor, &value, tag.as_deref(), plain),
            Ev::SeqStart { .. } => {
                let value = visitor.visit_seq(Seq {
                    stream: self,
                    len: 0,
                })?;
                match self.next()?.ev {
                    Ev::SeqEnd => Ok(value),
                    _ => Err(de::Error::custom("expected the end of a list")),
                }
            }
            Ev::MapStart { .. } => {
                let mut map = Map {
                    stream: self,
                    key: None,
                    key_line: None,
                };
                // An error the visitor makes right after a key (a duplicate, an unknown
                // field) is about that key: told at its line, not the mapping's first.
                let value = visitor
                    .visit_map(&mut map)
                    .map_err(|err| match map.key_line {
                        Some(line) => err.or_at(line, &map.stream.path),
                        None => err,
                    })?;
                match self.next()?.ev {
                    Ev::MapEnd => Ok(value),
                    _ => Err(de::Error::custom("expected the end of a mapping")),
                }
            }
            Ev::Alias(range) => {
                self.replays.push(Replay {
                    pos: range.start,
                    end: range.end,
                });
                de::Deserializer::deserialize_any(self, visitor)
            }
            Ev::End if self.empty => visitor.visit_none(),
            Ev::End | Ev::SeqEnd | Ev::MapEnd => {
                Err(de::Error::custom("EOF while parsing a value"))
            }
        }
    }
}

fn kind(ev: &Ev) -> Next {
    match ev {
        Ev::SeqEnd => Next::SeqEnd,
        Ev::MapEnd => Next::MapEnd,
        Ev::End => Next::End,
        _ => Next::Node,
    }
}

/// The name of a local tag (`!env` → `env`), which reaches the visitor as an enum; `None` for
/// no tag or a core one (`tag:yaml.org,2002:…`).
fn local_tag(tag: Option<&str>) -> Option<String> {
    let rest = tag?.strip_prefix('!')?;
    Some(if rest.is_empty() { "!" } else { rest }.to_owned())
}

const CORE: &str = "tag:yaml.org,2002:";

impl<'de> de::Deserializer<'de> for &mut Stream<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let node = self.next()?;
        let line = node.line;
        self.node(node, visitor)
            .map_err(|err| err.or_at(line, &self.path))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// A scalar's value as serde_norway read it: core tags applied, plain text resolved.
fn scalar<'de, V: Visitor<'de>>(
    visitor: V,
    value: &str,
    tag: Option<&str>,
    plain: bool,
) -> Result<V::Value, Error> {
    let Some(tag) = tag else {
        return match plain {
            true => untagged(visitor, value),
            false => visitor.visit_str(value),
        };
    };
    match tag.strip_prefix(CORE) {
        Some("bool") => match parse_bool(value) {
            Some(v) => visitor.visit_bool(v),
            None => Err(invalid(value, "a boolean")),
        },
        Some("int") => match int(value) {
            Some(int) => int.visit(visitor),
            None => Err(invalid(value, "an integer")),
        },
        Some("float") => match parse_float(value) {
            Some(v) => visitor.visit_f64(v),
            None => Err(invalid(value, "a float")),
        },
        Some("null") => match is_null(value) {
            true => visitor.visit_unit(),
            false => Err(invalid(value, "null")),
        },
        // Any other tag (`!!binary`, `!<tag:example.com,2000:x>`): its text, as a string.
        _ => visitor.visit_str(value),
    }
}

fn invalid(value: &str, expected: &str) -> Error {
    de::Error::custom(format_args!(
        "invalid value: string {value:?}, expected {expected}"
    ))
}

/// A plain scalar without a tag: null, a boolean, an integer, a float, else a string.
fn untagged<'de, V: Visitor<'de>>(visitor: V, value: &str) -> Result<V::Value, Error> {
    if value.is_empty() || is_null(value) {
        return visitor.visit_unit();
    }
    if let Some(v) = parse_bool(value) {
        return visitor.visit_bool(v);
    }
    if let Some(int) = int(value) {
        return int.visit(visitor);
    }
    if !leading_zero_digits(value) {
        if let Some(v) = parse_float(value) {
            return visitor.visit_f64(v);
        }
    }
    visitor.visit_str(value)
}

fn is_null(value: &str) -> bool {
    matches!(value, "null" | "Null" | "NULL" | "~")
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// An integer of the core schema, in the narrowest type serde_norway handed over.
enum Int {
    U64(u64),
    I64(i64),
    U128(u128),
    I128(i128),
}

impl Int {
    fn visit<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Int::U64(v) => visitor.visit_u64(v),
            Int::I64(v) => visitor.visit_i64(v),
            Int::U128(v) => visitor.visit_u128(v),
            Int::I128(v) => visitor.visit_i128(v),
        }
    }
}

fn int(value: &str) -> Option<Int> {
    if let Some(v) = unsigned(value) {
        return Some(match u64::try_from(v) {
            Ok(v) => Int::U64(v),
            Err(_) => Int::U128(v),
        });
    }
    negative(value).map(|v| match i64::try_from(v) {
        Ok(v) => Int::I64(v),
        Err(_) => Int::I128(v),
    })
}

/// `+`-signed or unsigned: `0x…`, `0o…`, `0b…`, or decimal digits without a leading zero.
fn unsigned(value: &str) -> Option<u128> {
    let digits = value.strip_prefix('+').unwrap_or(value);
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = digits.strip_prefix(prefix) {
            if rest.starts_with(['+', '-']) {
                return None;
            }
            if let Ok(v) = u128::from_str_radix(rest, radix) {
                return Some(v);
            }
        }
    }
    if leading_zero_digits(value) || digits.starts_with(['+', '-']) {
        return None;
    }
    digits.parse().ok()
}

/// `-0x…`, `-0o…`, `-0b…`, or `-` and decimal digits without a leading zero.
fn negative(value: &str) -> Option<i128> {
    let rest = value.strip_prefix('-')?;
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(digits) = rest.strip_prefix(prefix) {
            if let Ok(v) = i128::from_str_radix(&format!("-{digits}"), radix) {
                return Some(v);
            }
        }
    }
    if leading_zero_digits(value) || rest.starts_with(['+', '-']) {
        return None;
    }
    value.parse().ok()
}

/// A float of the core schema (`.inf`, `.nan` and their spellings included).
fn parse_float(value: &str) -> Option<f64> {
    let unsigned = match value.strip_prefix('+') {
        Some(rest) if rest.starts_with(['+', '-']) => return None,
        Some(rest) => rest,
        None => value,
    };
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") {
        return Some(f64::INFINITY);
    }
    if matches!(value, "-.inf" | "-.Inf" | "-.INF") {
        return Some(f64::NEG_INFINITY);
    }
    if matches!(value, ".nan" | ".NaN" | ".NAN") {
        return Some(f64::NAN);
    }
    unsigned.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Digits after a leading zero (`007`, `-01`): a string in YAML 1.2, not a number.
fn leading_zero_digits(value: &str) -> bool {
    let digits = value.strip_prefix(['-', '+']).unwrap_or(value);
    digits.len() > 1 && digits.starts_with('0') && digits[1..].bytes().all(|b| b.is_ascii_digit())
}

/// The entries of a list, read as the visitor asks for them.
struct Seq<'s, 't> {
    stream: &'s mut Stream<'t>,
    len: usize,
}

impl<'de> de::SeqAccess<'de> for Seq<'_, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.stream.peek()? {
            Next::SeqEnd => Ok(None),
            Next::Node => {
                let at = Seg::Index(self.len);
                self.len += 1;
                self.stream.value_at(at, seed).map(Some)
            }
            Next::MapEnd | Next::End => Err(de::Error::custom("unexpected end of a list")),
        }
    }
}

/// The keys and values of a mapping, read as the visitor asks for them.
struct Map<'s, 't> {
    stream: &'s mut Stream<'t>,
    /// The key just read, when it was a scalar, for the path of its value.
    key: Option<Seg>,
    /// The line of the key just read, until the mapping ends.
    key_line: Option<usize>,
}

impl<'de> de::MapAccess<'de> for Map<'_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.stream.peek()? {
            Next::MapEnd => {
                self.key_line = None;
                Ok(None)
            }
            Next::Node => {
                self.key = self
                    .stream
                    .peeked_scalar()
                    .map(|key| Seg::Key(key.to_owned()));
                self.key_line = self.stream.peeked_line();
                seed.deserialize(&mut *self.stream).map(Some)
            }
            Next::SeqEnd | Next::End => Err(de::Error::custom("unexpected end of a mapping")),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let at = self.key.take().unwrap_or(Seg::Unknown);
        self.stream.value_at(at, seed)
    }
}

/// A node with a local tag, handed to the visitor as an enum whose variant is the tag's name.
/// The seeds refuse it once they have the name, so its content is never read.
struct Tagged {
    tag: String,
}

impl<'de> de::EnumAccess<'de> for Tagged {
    type Error = Error;
    type Variant = Tagged;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Tagged), Error> {
        let name = seed.deserialize(self.tag.clone().into_deserializer())?;
        Ok((name, self))
    }
}

impl<'de> de::VariantAccess<'de> for Tagged {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Err(self.unsupported())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _: T) -> Result<T::Value, Error> {
        Err(self.unsupported())
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, Error> {
        Err(self.unsupported())
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Error> {
        Err(self.unsupported())
    }
}

impl Tagged {
    fn unsupported(&self) -> Error {
        de::Error::custom(format_args!(
            "YAML tags like `!{}` are not supported",
            self.tag
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn read(text: &str) -> Result<Value, Error> {
        let mut stream = Stream::new(text);
        let value = serde::Deserialize::deserialize(&mut stream)?;
        stream.finish()?;
        Ok(value)
    }

    /// The reader gives what serde_norway's own deserializer gave for the same text.
    #[test]
    fn values_are_the_ones_serde_norway_read() {
        let texts = [
            "a: 1\nb: -2\nc: 3.25\nd: 1e3\ne: .5\nf: -.inf\ng: 0x10\nh: 0o7\ni: 0b11\nj: +5\n",
            "a: 007\nb: -0\nc: 0\nd: 00\ne: 1_000\nf: 12:30\ng: 2024-01-02\nh: 0.1.2\ni: '1'\nj: \"2\"\n",
            "a: yes\nb: no\nc: on\nd: TRUE\ne: False\nf: ~\ng: null\nh: Null\ni:\nj: ''\n",
            "a: |\n  line one\n  line two\nb: >\n  folded\n  text\nc: 'it''s'\nd: \"tab\\there\"\n",
            "images:\n  - input: https://x/a.jpg\n  - {input: b.png, output: c/d.webp}\n  - e.jpg\n",
            "base: &b {width: 10, format: png}\nuse: *b\nlist: &l [1, [2, 3]]\nagain: [*l, *b]\n",
            "a: &s text\nb: *s\nc: [*s, *s]\n",
            "- 1\n- [a, b]\n- {k: v}\n- - nested\n",
            "key with spaces: value with spaces\n\"quoted key\": 1\n? explicit\n: entry\n",
            "a: !!str 12\nb: !!int '7'\nc: !!float '1.5'\nd: !!null ~\ne: !!bool true\n",
            "---\na: 1\n...\n",
            "",
            "plain scalar\n",
            "{a: [1, 2, {b: c}], d: e}\n",
            "a: &x 1\nb: &x [2]\nc: *x\n",
            // Tags neither core nor local: the text, as a string.
            "a: !<tag:example.com,2000:x> 5\nb: !!binary aGk=\n",
            "%TAG !e! tag:example.com,2000:\n---\na: !e!x true\n",
        ];
        for text in texts {
            let norway: Value =
                serde_yaml::from_str(text).unwrap_or_else(|err| panic!("{text:?}: {err}"));
            assert_eq!(read(text).unwrap(), norway, "{text:?}");
        }
    }

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        let text = "a: ~\nb: True\nc: 0x1F\nd: -0o17\ne: 0b101\nf: 007\ng: 1.5e3\nh: +12\ni: -3\nk: ''\nl: '12'\nm: yes\nn:\n";
        assert_eq!(
            read(text).unwrap(),
            json!({"a": null, "b": true, "c": 31, "d": -15, "e": 5, "f": "007", "g": 1500.0,
                   "h": 12, "i": -3, "k": "", "l": "12", "m": "yes", "n": null})
        );
    }

    #[test]
    fn core_tags_are_applied_and_local_tags_refused() {
        assert_eq!(
            read("a: !!str 12\nb: !!int '7'\nc: !!bool 'false'\n").unwrap(),
            json!({"a": "12", "b": 7, "c": false})
        );
        // A plain serde visitor does not take enums; the seeds of `yaml::value` refuse the tag.
        let err = read("a: 1\nb: !env X\n").unwrap_err();
        assert!(err.message.contains("enum"), "{err:?}");
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn aliases_replay_their_anchor_as_it_was_when_read() {
        assert_eq!(
            read("a: &x {k: [1, 2]}\nb: *x\nc: &y v\nd: [*y, *x]\n").unwrap(),
            json!({"a": {"k": [1, 2]}, "b": {"k": [1, 2]}, "c": "v", "d": ["v", {"k": [1, 2]}]})
        );
        // An anchor redefined inside its own node: the later definition is the one named.
        // (serde_norway numbered anchors by the count of distinct names, so a third anchor
        // took the redefinition's number and `b` read as `{k: v}`.)
        assert_eq!(
            read("a: &x [&x 1, 2]\nb: *x\nc: &y {k: &y v}\nd: *y\n").unwrap(),
            json!({"a": [1, 2], "b": 1, "c": {"k": "v"}, "d": "v"})
        );
        let err = read("a: *nowhere\n").unwrap_err();
        assert_eq!(err.line, Some(1), "{err:?}");
        // Inside its own anchor, even when the name was defined before: endless.
        for text in ["a: &x 1\nb: &x [*x]\n", "a: &x\n  - 1\n  - *x\n"] {
            let err = read(text).unwrap_err();
            assert!(
                err.message.contains("recursion limit exceeded"),
                "{text:?}: {err:?}"
            );
            assert!(
                serde_yaml::from_str::<Value>(text).is_err(),
                "serde_norway refused {text:?} too"
            );
        }
    }

    #[test]
    fn paths_read_as_serde_norway_wrote_them() {
        let seg = |k: &str| Seg::Key(k.to_owned());
        assert_eq!(render(&[]), ".");
        assert_eq!(render(&[Seg::Index(2)]), ".[2]");
        assert_eq!(render(&[seg("api"), seg("limits")]), "api.limits");
        assert_eq!(
            render(&[seg("images"), Seg::Index(3), seg("input")]),
            "images[3].input"
        );
        assert_eq!(render(&[seg("a"), Seg::Unknown]), "a.?");
        let err = read("a:\n  b: [1, x: y: z]\n").unwrap_err();
        assert!(err.line.is_some(), "{err:?}");
    }

    #[test]
    fn empty_streams_are_none_and_second_documents_refused() {
        assert_eq!(read("").unwrap(), Value::Null);
        assert_eq!(read("# a comment\n").unwrap(), Value::Null);
        assert_eq!(read("---\n...\n").unwrap(), Value::Null);
        let err = read("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(err.message.contains("more than one document"), "{err:?}");
    }

    #[test]
    fn syntax_errors_name_the_problem_and_its_line() {
        let err = read("a: 1\nb: [\n").unwrap_err();
        assert!(err.line.is_some(), "{err:?}");
        assert!(!err.message.is_empty());
        // An error of the text itself is not given the path of the value it fell in.
        let err = read("images:\n  - a\n  - [b\n").unwrap_err();
        assert_eq!(err.to_string(), err.message, "{err:?}");
    }
}
