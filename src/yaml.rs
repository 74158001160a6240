//! YAML and JSON text turned into data under fixed bounds, and the line of each field for
//! problem messages; shared by configs, folder recipes and manifests.
//!
//! Data is built by the one seed of [`value`] (which refuses duplicate keys, tags and
//! non-finite numbers) as [`stream`] reads the text, one libyaml event at a time; JSON streams
//! into the same seed through serde_json. Before the reader sees a text, [`screen`] reads it once
//! as a stream and refuses it past a bound: more than [`MAX_DEPTH`] levels, too many entries in a
//! list or mapping, or aliases that expand to too much data. Line numbers come from [`lines`], a
//! second pass that only runs when there is a problem to report, so a valid 100,000-image
//! manifest never pays for it.

pub mod lines;
mod screen;
pub mod stream;
pub mod value;

use serde::de::DeserializeSeed as _;
use serde_json::Value;

use crate::yaml::value::{Bounds, Data, Refusal, Rules, Syntax};

/// Most lists and mappings open at once in a manifest, recipe or config (the root is one).
/// A manifest needs five or six; deeper is a mistake (an unclosed `[`) or a bomb.
pub const MAX_DEPTH: usize = 64;

/// Bytes the event passes (`screen`, `lines`) hand libyaml at a time.
const READ_CHUNK: usize = 64 * 1024;

/// What libyaml-safer reads of a text ([`scanner_input`]).
pub(crate) type ScannerInput<'t> = std::io::BufReader<std::io::Chain<&'t [u8], &'static [u8]>>;

/// `text` as libyaml-safer's scanner reads it, in chunks of [`READ_CHUNK`] (it decodes all it
/// is handed into a buffer of `char`s, 4 bytes each). A text whose last byte is a backslash
/// gets a newline after it: the scanner panics on a double-quoted scalar that ends the file
/// with an escape (`"\`, two bytes, stopped `validate` and the daemon's intake); YAML reads
/// the newline the same, and the quote is then the unclosed one it is.
pub(crate) fn scanner_input(text: &str) -> ScannerInput<'_> {
    let tail: &'static [u8] = if text.ends_with('\\') { b"\n" } else { b"" };
    std::io::BufReader::with_capacity(READ_CHUNK, std::io::Read::chain(text.as_bytes(), tail))
}

/// A document that could not be turned into data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line of the error, when the parser knows it.
    pub line: Option<usize>,
    /// What went wrong, as the parser says it (lowercase, no trailing period).
    pub message: String,
    pub kind: ParseErrorKind,
}

/// Why a document could not be turned into data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// Not valid YAML or JSON, or past a fixed bound (nesting, alias expansion).
    Invalid,
    /// A list or mapping has more than `max` entries: the caller's limit, worded by the caller.
    TooManyEntries {
        /// The top-level key it is under (empty: the root itself).
        within: String,
        /// Whether it is that key's value itself (`images: [...]`) rather than nested in it.
        is_top_value: bool,
        /// The line of the first entry past the limit, when known.
        entry_line: Option<usize>,
        max: usize,
    },
}

impl ParseError {
    pub fn invalid(line: Option<usize>, message: String) -> ParseError {
        ParseError {
            line,
            message,
            kind: ParseErrorKind::Invalid,
        }
    }
}

/// The error for a document a bound refused; `line` is where to point, `entry_line` the line
/// of the first entry past an entry bound.
pub fn refused(
    refusal: Refusal,
    line: Option<usize>,
    entry_line: Option<usize>,
    bounds: &Bounds,
) -> ParseError {
    match refusal {
        Refusal::TooDeep => ParseError::invalid(
            line,
            format!(
                "recursion limit exceeded: nested deeper than {} levels; nothing here needs that many: look for an unclosed `[` or `{{`, or an alias used inside its own anchor",
                bounds.max_depth
            ),
        ),
        Refusal::TooManyEntries {
            within,
            is_top_value,
            max,
        } => {
            let what = match (within.as_str(), is_top_value) {
                ("", _) => "the document".to_owned(),
                (key, true) => format!("`{key}`"),
                (key, false) => format!("a list or mapping under `{key}`"),
            };
            ParseError {
                line,
                message: format!("{what} has more than {max} entries"),
                kind: ParseErrorKind::TooManyEntries {
                    within,
                    is_top_value,
                    entry_line,
                    max,
                },
            }
        }
    }
}

/// Parses YAML (or JSON, which is a subset) into a `serde_json::Value`.
///
/// Mapping keys must be strings (numbers and booleans are turned into their text). Tags are
/// refused, and so are non-finite floats, because neither survives a JSON request body.
pub fn parse(text: &str, bounds: &Bounds) -> Result<Value, ParseError> {
    parse_with(text, bounds, |de, rules| {
        Data { rules, depth: 0 }.deserialize(de)
    })
}

/// [`parse`] into another shape than `serde_json::Value` (a manifest's `Doc`): the same BOM,
/// screen and error handling, with `deserialize` building the data under the given [`Rules`]
/// as [`stream`] reads the text.
pub fn parse_with<T>(
    text: &str,
    bounds: &Bounds,
    deserialize: impl FnOnce(&mut stream::Stream<'_>, &Rules) -> Result<T, stream::Error>,
) -> Result<T, ParseError> {
    let text = strip_bom(text);
    screen::screen(text, bounds)?;
    let rules = Rules::new(Syntax::Yaml, *bounds);
    let mut reader = stream::Stream::new(text);
    let read = deserialize(&mut reader, &rules).and_then(|value| reader.finish().map(|()| value));
    read.map_err(|err| match rules.take_refusal() {
        Some(refusal) => refused(refusal, err.line, err.line, bounds),
        None => {
            let mut message = err.to_string();
            if let Some(line) = err.line.filter(|&line| indented_with_a_tab(text, line)) {
                message.push_str(&format!(
                    " (line {line} is indented with a tab: YAML indents with spaces only)"
                ));
            }
            ParseError::invalid(err.line, message)
        }
    })
}

/// Whether the leading whitespace of 1-based `line` holds a tab, the commonest cause of a
/// syntax error libyaml words as "found character that cannot start any token".
fn indented_with_a_tab(text: &str, line: usize) -> bool {
    text.lines().nth(line.saturating_sub(1)).is_some_and(|l| {
        l.chars()
            .take_while(|c| c.is_whitespace() || *c == '-')
            .any(|c| c == '\t')
    })
}

/// Drops a leading UTF-8 byte order mark (Windows editors write one). Neither parser skips it:
/// the reader then misreads a config as several documents, and the line pass would make it
/// part of the first key, so no line is found for it. A BOM holds no newline: lines are unchanged.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// What kind of value this is, in YAML's words, for messages (`expected …, found a list`).
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The known name closest to `typed` (edit distance at most half its length), for hints.
pub fn closest<'k>(typed: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|candidate| (levenshtein(typed, candidate), *candidate))
        .filter(|(distance, _)| *distance <= typed.chars().count().max(3) / 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Edit distance between two short strings.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j + 1] + 1).min(cur[j] + 1).min(prev[j] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        max_depth: MAX_DEPTH,
        max_entries: usize::MAX,
        long_list: None,
    };

    #[test]
    fn parse_reports_line() {
        let err = parse("a: 1\nb: [\n", &BOUNDS).unwrap_err();
        assert!(err.line.is_some());
        assert!(!err.message.contains("at line"));
    }

    #[test]
    fn parse_keeps_the_value_rules() {
        assert_eq!(parse("", &BOUNDS), Ok(Value::Null));
        assert_eq!(parse("# only a comment\n", &BOUNDS), Ok(Value::Null));
        assert_eq!(
            parse("1: one\ntrue: [x]\n", &BOUNDS),
            Ok(serde_json::json!({"1": "one", "true": ["x"]}))
        );
        let err = parse("a: 1\nb: !env X\n", &BOUNDS).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("YAML tags like `!env`"), "{err:?}");
        let err = parse("a: .inf\n", &BOUNDS).unwrap_err();
        assert!(
            err.message.contains("the number `.inf` is not finite"),
            "{err:?}"
        );
        let err = parse("a: 1\na: 2\n", &BOUNDS).unwrap_err();
        assert!(
            err.message.contains("duplicate entry with key \"a\""),
            "{err:?}"
        );
    }

    #[test]
    fn a_tab_in_the_indentation_is_named() {
        let err = parse("images:\n\t- input: a.jpg\n", &BOUNDS).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(
            err.message
                .ends_with("(line 2 is indented with a tab: YAML indents with spaces only)"),
            "{err:?}"
        );
        // A tab inside a value is no indentation.
        let err = parse("a: \tb\nc: [\n", &BOUNDS).unwrap_err();
        assert!(!err.message.contains("tab"), "{err:?}");
    }

    #[test]
    fn a_duplicate_key_is_told_at_its_own_line() {
        let err = parse("images:\n  - a\nimages:\n  - b\n", &BOUNDS).unwrap_err();
        assert_eq!(err.line, Some(3), "{err:?}");
        let err = parse("a:\n  b: 1\n  c: 2\n  b: 3\n", &BOUNDS).unwrap_err();
        assert_eq!(err.line, Some(4), "{err:?}");
        assert!(
            err.message.contains("duplicate entry with key \"b\""),
            "{err:?}"
        );
    }

    #[test]
    fn nesting_past_the_limit_is_refused_with_its_line() {
        let ok = format!("{}x{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(
            parse(&ok, &BOUNDS).is_ok(),
            "{MAX_DEPTH} levels are allowed"
        );
        let deep = format!("a: 1\nb: {}", "[".repeat(MAX_DEPTH));
        let err = parse(&deep, &BOUNDS).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(
            err.message.contains("nested deeper than 64 levels"),
            "{err:?}"
        );
    }

    #[test]
    fn aliases_past_the_limit_are_refused_as_the_value_is_built() {
        // The screen does not follow aliases; the seed counts the levels they add.
        let mut text = format!("a: &a {}x{}\nb: ", "[".repeat(40), "]".repeat(40));
        text.push_str(&format!("{}*a{}\n", "[".repeat(30), "]".repeat(30)));
        let err = parse(&text, &BOUNDS).unwrap_err();
        assert!(
            err.message.contains("nested deeper than 64 levels"),
            "{err:?}"
        );
        assert!(err.line.is_some(), "{err:?}");
    }
}
