//! Dotted field paths of a YAML (or JSON) text mapped to the lines they start on, for problem
//! messages of configs and manifests.
//!
//! A cheap pass over libyaml's events (libyaml-safer, the scanner `yaml::stream` reads with) records
//! where each key and sequence item starts.
//! Aliases are not expanded, so it stays linear in the size of the text, and it stops below
//! [`MAX_DEPTH`] levels. [`LineMap::build_for`] records only the paths asked for (and their
//! ancestors), so the problems of a 100,000-image manifest do not cost a map of every path.

use std::collections::{HashMap, HashSet};

use libyaml_safer::{EventData, Parser};

use crate::yaml::{MAX_DEPTH, strip_bom};

/// Dotted path (`images[3].operations.resizing.width`, `api.poll.min`) → 1-based line.
#[derive(Debug, Default, Clone)]
pub struct LineMap {
    /// Where each key or sequence item starts; keys are dotted paths with `[i]` for items.
    lines: HashMap<String, usize>,
}

impl LineMap {
    /// Builds the map of every path from YAML text. Best effort: on a syntax error it keeps
    /// what it saw.
    pub fn build(text: &str) -> LineMap {
        LineMap::walk(text, None)
    }

    /// Builds the map of `paths` and their ancestors only (what [`LineMap::line`] may look up).
    pub fn build_for<'p>(text: &str, paths: impl IntoIterator<Item = &'p str>) -> LineMap {
        let mut wanted = HashSet::new();
        for path in paths {
            let mut path = Some(path);
            while let Some(p) = path {
                if !wanted.insert(p.to_owned()) {
                    break;
                }
                path = parent(p);
            }
            wanted.insert(String::new());
        }
        LineMap::walk(text, Some(wanted))
    }

    fn walk(text: &str, wanted: Option<HashSet<String>>) -> LineMap {
        let text = strip_bom(text);
        let mut builder = Builder {
            wanted,
            ..Builder::default()
        };
        let mut parser = Parser::new();
        // In chunks: the scanner decodes all it is handed into a buffer of `char`s, 4 bytes each.
        parser.set_input(crate::yaml::scanner_input(text));
        // Event by event: a recursive walk overflows the stack on a few thousand levels of
        // `- - - …`, which this pass still sees (a config with any problem is mapped, whatever
        // its shape). Deeper than [`MAX_DEPTH`] means the document was refused anyway; stopping
        // there also keeps the scanner, whose cost per token grows with the open flow levels,
        // from spending minutes on 1 MB of `[`.
        while !builder.done && builder.stack.len() <= MAX_DEPTH {
            match parser.parse() {
                Ok(event) => {
                    if matches!(event.data, EventData::StreamEnd) {
                        break;
                    }
                    let line = usize::try_from(event.start_mark.line)
                        .unwrap_or(usize::MAX)
                        .saturating_add(1);
                    builder.on_event(event.data, line);
                }
                Err(_) => break,
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
    /// Only these paths are recorded, when set.
    wanted: Option<HashSet<String>>,
    path: String,
    stack: Vec<Frame>,
    /// Stop after the first document: the reader refuses more than one anyway.
    done: bool,
}

impl Builder {
    /// Records the current path's line, unless it is not wanted or already seen.
    fn record(&mut self, line: usize) {
        if self
            .wanted
            .as_ref()
            .is_none_or(|wanted| wanted.contains(&self.path))
            && !self.lines.contains_key(&self.path)
        {
            self.lines.insert(self.path.clone(), line);
        }
    }

    /// Called for each node start (scalar, alias, mapping, sequence); returns whether the node
    /// is a complex key that must be skipped.
    fn node_start(&mut self, line: usize, is_collection: bool) -> bool {
        match self.stack.last_mut() {
            None => {
                self.record(line);
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
                self.record(line);
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

impl Builder {
    fn on_event(&mut self, ev: EventData, line: usize) {
        if self.done {
            return;
        }
        match ev {
            EventData::DocumentEnd { .. } => self.done = true,
            EventData::Scalar { value: text, .. } => {
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
                    self.record(line);
                    return;
                }
                if self.node_start(line, false) {
                    return;
                }
                self.node_end();
            }
            EventData::Alias { .. } => {
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
            EventData::MappingStart { .. } | EventData::SequenceStart { .. } => {
                let is_map = matches!(ev, EventData::MappingStart { .. });
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
            EventData::MappingEnd | EventData::SequenceEnd => match self.stack.last_mut() {
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
    fn minified_json_lines() {
        let text = "{\"images\":[{\"input\":\"a\"},\n{\"input\":\"b\",\"output\":7}]}\n";
        let map = LineMap::build(text);
        assert_eq!(map.exact("images[1].output"), Some(2));
    }

    #[test]
    fn complex_keys_are_skipped() {
        let text = "? [a, b]\n: 1\nx: 2\n";
        let map = LineMap::build(text);
        assert_eq!(map.exact("x"), Some(3));
    }

    #[test]
    fn build_for_records_only_the_paths_asked_for_and_their_ancestors() {
        let text = "a:\n  b: 1\n  c: [x, y]\nd: 2\n";
        let map = LineMap::build_for(text, ["a.c[1]"]);
        assert_eq!(map.exact("a.c[1]"), Some(3));
        assert_eq!(map.exact("a"), Some(1));
        assert_eq!(map.exact("a.b"), None, "not asked for");
        assert_eq!(map.exact("d"), None, "not asked for");
        assert_eq!(map.line("a.c[1].z"), Some(3));
        assert_eq!(map.len(), 4, "``, `a`, `a.c`, `a.c[1]`");
    }
}
