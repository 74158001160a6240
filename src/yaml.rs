//! YAML with line numbers: maps dotted field paths of a document to the line they start on.
//!
//! Data comes from serde_norway (imported as `serde_yaml`), which refuses alias bombs and
//! duplicate keys. Line numbers come from a second, cheap pass over yaml-rust2's event parser
//! that records where each key and sequence item starts. Aliases are not expanded in that pass,
//! so it stays linear in the size of the text. The second pass only runs when there is a
//! problem to report, so a valid 100,000-image manifest never pays for it.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A syntax or shape error found while turning YAML text into data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line of the error, when the parser knows it.
    pub line: Option<usize>,
    /// What went wrong, as the parser says it (lowercase, no trailing period).
    pub message: String,
}

/// Parses YAML (or JSON, which is a subset) into a `serde_json::Value`.
///
/// Mapping keys must be strings (numbers and booleans are turned into their text). Tags are
/// refused, and so are non-finite floats, because neither survives a JSON request body.
pub fn parse(text: &str) -> Result<serde_json::Value, ParseError> {
    parse_with(text, |text| serde_yaml::from_str::<serde_yaml::Value>(text)).and_then(to_json)
}

/// [`parse`] into another shape than `serde_json::Value` (a manifest's `Doc`): the same BOM,
/// alias-expansion and error handling, with `from_str` doing the deserializing.
pub fn parse_with<T>(
    text: &str,
    from_str: impl FnOnce(&str) -> Result<T, serde_yaml::Error>,
) -> Result<T, ParseError> {
    let text = strip_bom(text);
    check_alias_expansion(text)?;
    from_str(text).map_err(|err| ParseError {
        line: err.location().map(|loc| loc.line()),
        message: clean_message(&err.to_string()),
    })
}

/// Drops a leading UTF-8 byte order mark (Windows editors write one). Neither parser skips it:
/// serde_norway then misreads a config as several documents, and yaml-rust2 makes it part of
/// the first key, so no line is found for it. A BOM holds no newline: lines are unchanged.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Floor of the data a document may expand to through aliases, in approximate bytes (scalar
/// length plus [`NODE_COST`] per node); the cap is this or [`ALIAS_EXPANSION_FACTOR`] times
/// the text, whichever is larger. serde_norway bounds the *number* of alias jumps, not their
/// size: one 8 MiB string repeated by a million 3-byte aliases (`[*a,*a,…]`) fits a 16 MiB
/// manifest and would expand to terabytes.
pub const MIN_ALIAS_EXPANSION: u64 = 64 * 1024 * 1024;

/// How much larger than its text a document may grow through aliases (above the floor).
pub const ALIAS_EXPANSION_FACTOR: u64 = 8;

/// Nesting beyond which the yaml-rust2 passes stop: above serde_norway's limit of 128.
const MAX_LINE_DEPTH: usize = 256;

/// Approximate memory of one node besides its text.
const NODE_COST: u64 = 32;

/// Refuses a document whose aliases expand past the cap (see [`MIN_ALIAS_EXPANSION`]). Runs only
/// when the text has both an anchor and an alias indicator; one linear pass over yaml-rust2
/// events that measures each anchored node once and adds that size at every alias.
fn check_alias_expansion(text: &str) -> Result<(), ParseError> {
    if !(text.contains('&') && text.contains('*')) {
        return Ok(());
    }
    let cap = MIN_ALIAS_EXPANSION.max((text.len() as u64).saturating_mul(ALIAS_EXPANSION_FACTOR));
    let mut parser = Parser::new_from_str(text);
    let mut total: u64 = 0;
    let mut anchor_sizes: HashMap<usize, u64> = HashMap::new();
    // Open collections: (anchor id, total when it started).
    let mut open: Vec<(usize, u64)> = Vec::new();
    loop {
        let (event, mark) = match parser.next_token() {
            Ok(next) => next,
            // Syntax errors are serde_norway's to report.
            Err(_) => return Ok(()),
        };
        match event {
            Event::StreamEnd => return Ok(()),
            Event::Scalar(value, _, anchor, _) => {
                let size = value.len() as u64 + NODE_COST;
                total = total.saturating_add(size);
                if anchor > 0 {
                    anchor_sizes.insert(anchor, size);
                }
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if open.len() >= MAX_LINE_DEPTH {
                    // serde_norway refuses this depth itself; going on would cost yaml-rust2's
                    // scanner time and memory that grow with the square of the nesting.
                    return Ok(());
                }
                open.push((anchor, total));
                total = total.saturating_add(NODE_COST);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, start)) = open.pop() {
                    if anchor > 0 {
                        anchor_sizes.insert(anchor, total.saturating_sub(start));
                    }
                }
            }
            Event::Alias(anchor) => {
                let size = anchor_sizes.get(&anchor).copied().unwrap_or(NODE_COST);
                total = total.saturating_add(size);
            }
            _ => {}
        }
        if total > cap {
            return Err(ParseError {
                line: Some(mark.line()),
                message: format!(
                    "repetition limit exceeded: anchors and aliases (`&a`, `*a`) expand to more than {} MiB; write the values out",
                    cap / (1024 * 1024)
                ),
            });
        }
    }
}

/// Removes serde_norway's " at line N column M" suffix: the line is reported separately.
fn clean_message(message: &str) -> String {
    let message = match message.find(" at line ") {
        Some(idx) => &message[..idx],
        None => message,
    };
    if message.contains("repetition limit exceeded") {
        return format!(
            "{message}: anchors and aliases (`&a`, `*a`) expand to too much data; write the values out"
        );
    }
    if message.contains("recursion limit exceeded") {
        return format!("{message}: the document nests too deeply");
    }
    message.to_owned()
}

fn to_json(value: serde_yaml::Value) -> Result<serde_json::Value, ParseError> {
    use serde_yaml::Value as Y;
    Ok(match value {
        Y::Null => serde_json::Value::Null,
        Y::Bool(b) => serde_json::Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                serde_json::Value::from(i)
            } else if let Some(u) = n.as_u64() {
                serde_json::Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match serde_json::Number::from_f64(f) {
                    Some(num) => serde_json::Value::Number(num),
                    None => {
                        return Err(ParseError {
                            line: None,
                            message: format!("the number `{n}` is not finite"),
                        });
                    }
                }
            }
        }
        Y::String(s) => serde_json::Value::String(s),
        Y::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(to_json(item)?);
            }
            serde_json::Value::Array(out)
        }
        Y::Mapping(map) => {
            let mut out = serde_json::Map::new();
            for (key, value) in map {
                let key = match key {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => {
                        return Err(ParseError {
                            line: None,
                            message: format!(
                                "mapping keys must be plain strings, found {}",
                                kind_of(&other)
                            ),
                        });
                    }
                };
                out.insert(key, to_json(value)?);
            }
            serde_json::Value::Object(out)
        }
        Y::Tagged(tagged) => {
            return Err(ParseError {
                line: None,
                message: format!("YAML tags like `{}` are not supported", tagged.tag),
            });
        }
    })
}

fn kind_of(value: &serde_yaml::Value) -> &'static str {
    use serde_yaml::Value as Y;
    match value {
        Y::Null => "null",
        Y::Bool(_) => "a boolean",
        Y::Number(_) => "a number",
        Y::String(_) => "a string",
        Y::Sequence(_) => "a list",
        Y::Mapping(_) => "a mapping",
        Y::Tagged(_) => "a tagged value",
    }
}

/// Dotted path (`images[3].operations.resizing.width`, `api.poll.min`) → 1-based line.
#[derive(Debug, Default, Clone)]
pub struct LineMap {
    /// Where each key or sequence item starts; keys are dotted paths with `[i]` for items.
    lines: HashMap<String, usize>,
}

impl LineMap {
    /// Builds the map from YAML text. Best effort: on a syntax error it keeps what it saw.
    pub fn build(text: &str) -> LineMap {
        let text = strip_bom(text);
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // Event by event: `Parser::load` recurses once per nesting level and overflows the
        // stack on a few thousand levels of `- - - …`, which serde_norway refuses but this pass
        // still sees (a config with any problem is mapped, whatever its shape).
        // Deeper than serde_norway's limit means the document was refused anyway; stopping
        // there also keeps yaml-rust2's scanner, whose cost grows with the square of the
        // nesting, from spending minutes and gigabytes on `- - - …` 100,000 deep.
        while !builder.done && builder.stack.len() <= MAX_LINE_DEPTH {
            match parser.next_token() {
                Ok((Event::StreamEnd, _)) | Err(_) => break,
                Ok((event, mark)) => builder.on_event(event, mark),
            }
        }
        LineMap {
            lines: builder.lines,
        }
    }

    /// The line of `path` exactly, if the document has it.
    pub fn exact(&self, path: &str) -> Option<usize> {
        self.lines.get(path).copied()
    }

    /// The line of `path`, or of its closest ancestor that the document has.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.lines.get(path) {
                return Some(*line);
            }
            path = parent(path)?;
        }
    }

    /// Number of recorded paths (for tests).
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
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

/// `a.b[3].c` → `a.b[3]` → `a.b` → `a` → None.
pub fn parent(path: &str) -> Option<&str> {
    let cut = path.rfind(['.', '['])?;
    Some(&path[..cut])
}

/// One open collection while walking the event stream.
enum Frame {
    /// A mapping at `prefix_len` (length of the path string of the mapping itself).
    Mapping {
        prefix_len: usize,
        /// True when the next node is a key.
        want_key: bool,
    },
    /// A sequence; `next` is the index of the next item.
    Sequence { prefix_len: usize, next: usize },
    /// A complex key (a mapping or list used as a key): ignored with all it contains.
    Skip { depth: usize },
}

#[derive(Default)]
struct Builder {
    lines: HashMap<String, usize>,
    path: String,
    stack: Vec<Frame>,
    /// Stop after the first document: serde_norway refuses more than one anyway.
    done: bool,
}

impl Builder {
    /// Called for each node start (scalar, alias, mapping, sequence); returns whether the node
    /// is a complex key that must be skipped.
    fn node_start(&mut self, line: usize, is_collection: bool) -> bool {
        match self.stack.last_mut() {
            None => {
                self.lines.entry(String::new()).or_insert(line);
                false
            }
            Some(Frame::Skip { depth }) => {
                if is_collection {
                    *depth += 1;
                }
                true
            }
            Some(Frame::Mapping { want_key, .. }) => {
                if *want_key {
                    // Keys are handled in `on_event` (scalar) or skipped (complex).
                    is_collection
                } else {
                    false
                }
            }
            Some(Frame::Sequence { prefix_len, next }) => {
                self.path.truncate(*prefix_len);
                self.path.push('[');
                self.path.push_str(&next.to_string());
                self.path.push(']');
                *next += 1;
                self.lines.entry(self.path.clone()).or_insert(line);
                false
            }
        }
    }

    /// After a node is complete: a mapping value completes, so the mapping wants a key again.
    fn node_end(&mut self) {
        if let Some(Frame::Mapping { want_key, .. }) = self.stack.last_mut() {
            *want_key = true;
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.done {
            return;
        }
        let line = mark.line();
        match ev {
            Event::DocumentEnd => self.done = true,
            Event::Scalar(text, ..) => {
                if let Some(Frame::Mapping {
                    prefix_len,
                    want_key: want_key @ true,
                }) = self.stack.last_mut()
                {
                    *want_key = false;
                    let prefix_len = *prefix_len;
                    self.path.truncate(prefix_len);
                    if prefix_len > 0 {
                        self.path.push('.');
                    }
                    self.path.push_str(&text);
                    self.lines.entry(self.path.clone()).or_insert(line);
                    return;
                }
                if self.node_start(line, false) {
                    return;
                }
                self.node_end();
            }
            Event::Alias(_) => {
                if let Some(Frame::Mapping { want_key: true, .. }) = self.stack.last() {
                    // An alias used as a key: treat it like an anonymous key.
                    if let Some(Frame::Mapping { want_key, .. }) = self.stack.last_mut() {
                        *want_key = false;
                    }
                    return;
                }
                if self.node_start(line, false) {
                    return;
                }
                self.node_end();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                if self.node_start(line, true) {
                    if !matches!(self.stack.last(), Some(Frame::Skip { .. })) {
                        // A complex mapping key begins here.
                        self.stack.push(Frame::Skip { depth: 1 });
                    }
                    return;
                }
                let prefix_len = self.path.len();
                self.stack.push(if is_map {
                    Frame::Mapping {
                        prefix_len,
                        want_key: true,
                    }
                } else {
                    Frame::Sequence {
                        prefix_len,
                        next: 0,
                    }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => match self.stack.last_mut() {
                Some(Frame::Skip { depth }) => {
                    *depth -= 1;
                    if *depth == 0 {
                        self.stack.pop();
                        // The complex key is done; its value comes next.
                        if let Some(Frame::Mapping { want_key, .. }) = self.stack.last_mut() {
                            *want_key = false;
                        }
                    }
                }
                Some(Frame::Mapping { prefix_len, .. } | Frame::Sequence { prefix_len, .. }) => {
                    let prefix_len = *prefix_len;
                    self.stack.pop();
                    self.path.truncate(prefix_len);
                    self.node_end();
                }
                None => {}
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_nested_paths() {
        let text = "api:\n  poll:\n    min: 1s\n    max: 2s\nimages:\n  - input: a\n    operations:\n      resizing: { width: 5 }\n  - input: b\n";
        let map = LineMap::build(text);
        assert_eq!(map.exact("api"), Some(1));
        assert_eq!(map.exact("api.poll.min"), Some(3));
        assert_eq!(map.exact("api.poll.max"), Some(4));
        assert_eq!(map.exact("images[0].input"), Some(6));
        assert_eq!(map.exact("images[0].operations.resizing.width"), Some(8));
        assert_eq!(map.exact("images[1]"), Some(9));
        assert_eq!(map.line("images[1].output.x"), Some(9));
    }

    #[test]
    fn json_lines() {
        let text = "{\n  \"images\": [\n    {\"input\": \"a\"},\n    {\"input\": \"b\"}\n  ]\n}\n";
        let map = LineMap::build(text);
        assert_eq!(map.exact("images[1].input"), Some(4));
    }

    #[test]
    fn complex_keys_are_skipped() {
        let text = "? [a, b]\n: 1\nx: 2\n";
        let map = LineMap::build(text);
        assert_eq!(map.exact("x"), Some(3));
    }

    #[test]
    fn parse_reports_line() {
        let err = parse("a: 1\nb: [\n").unwrap_err();
        assert!(err.line.is_some());
        assert!(!err.message.contains("at line"));
    }
}
