//! The screen every YAML text passes before its data is built: one streaming pass over
//! libyaml's events that refuses a document nested too deeply, a list or mapping with too many
//! entries, or aliases that expand to too much data, as soon as the bound is passed.
//!
//! Why a pass of its own: the seeds count levels and entries too, but only of what they build;
//! an alias replays its anchor's events, so a few bytes of `*a` can stand for gigabytes of data,
//! which only a pass that sizes every anchor can refuse before building. This pass keeps only the
//! open levels and the anchors' sizes and stops at the first event past a bound, so its cost is
//! linear in the part of the text it reads, and it names the line of the first entry past an
//! entry bound.
//!
//! Syntax errors are the reader's to report: this pass stops at one, and `yaml::stream`, reading
//! with the same scanner, stops at the same place.

use std::collections::HashMap;

use libyaml_safer::{EventData, Parser};

use crate::yaml::value::{Bounds, Refusal};
use crate::yaml::{ParseError, refused};

/// Floor of the data a document may expand to through aliases, in approximate bytes (scalar
/// length plus [`NODE_COST`] per node); the cap is this or [`ALIAS_EXPANSION_FACTOR`] times
/// the text, whichever is larger. A bound on the *number* of alias jumps would not bound their
/// size: one 8 MiB string repeated by a million 3-byte aliases (`[*a,*a,…]`) fits a 16 MiB
/// manifest and would expand to terabytes.
pub const MIN_ALIAS_EXPANSION: u64 = 64 * 1024 * 1024;

/// How much larger than its text a document may grow through aliases (above the floor).
pub const ALIAS_EXPANSION_FACTOR: u64 = 8;

/// Approximate memory of one node besides its text.
const NODE_COST: u64 = 32;

/// One open list or mapping.
struct Open {
    /// Nodes seen directly in it (keys and values both, for a mapping).
    n_children: usize,
    is_mapping: bool,
    /// Its anchor, if any, and the expanded size when it opened, to size the anchor.
    anchor: Option<String>,
    total_at_start: u64,
    /// Line of the key it is the value of (top-level values only), else where it starts.
    line: usize,
}

/// Checks `text` (BOM already stripped) against `bounds` and the alias-expansion cap.
pub fn screen(text: &str, bounds: &Bounds) -> Result<(), ParseError> {
    let alias_cap =
        MIN_ALIAS_EXPANSION.max((text.len() as u64).saturating_mul(ALIAS_EXPANSION_FACTOR));
    let mut parser = Parser::new();
    // In chunks: the scanner decodes all it is handed into a buffer of `char`s, 4 bytes each.
    parser.set_input(crate::yaml::scanner_input(text));
    let mut open: Vec<Open> = Vec::new();
    let mut total: u64 = 0;
    let mut anchor_sizes: HashMap<String, u64> = HashMap::new();
    // The top-level key whose value is being read, and its line.
    let mut top_key = String::new();
    let mut top_key_line = 0;
    loop {
        let Ok(event) = parser.parse() else {
            return Ok(());
        };
        let line = usize::try_from(event.start_mark.line)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let is_node = matches!(
            event.data,
            EventData::Scalar { .. }
                | EventData::Alias { .. }
                | EventData::SequenceStart { .. }
                | EventData::MappingStart { .. }
        );
        if is_node {
            if let Some(parent) = open.last_mut() {
                parent.n_children += 1;
                let n_entries = if parent.is_mapping {
                    parent.n_children.div_ceil(2)
                } else {
                    parent.n_children
                };
                let depth = open.len();
                let within = if depth <= 1 { "" } else { top_key.as_str() };
                let max = bounds.max_entries_at(depth, within);
                if n_entries > max {
                    let at = open.last().map_or(line, |o| o.line);
                    return Err(refused(
                        Refusal::TooManyEntries {
                            within: within.to_owned(),
                            is_top_value: depth == 2,
                            max,
                        },
                        Some(at),
                        Some(line),
                        bounds,
                    ));
                }
            }
        }
        // A key of the root mapping (an odd child: keys come first).
        let is_top_key = open.len() == 1 && open[0].is_mapping && open[0].n_children % 2 == 1;
        let is_mapping = matches!(event.data, EventData::MappingStart { .. });
        match event.data {
            EventData::StreamEnd => return Ok(()),
            EventData::Scalar { value, anchor, .. } => {
                if is_top_key {
                    top_key.clear();
                    top_key.push_str(&value);
                    top_key_line = line;
                }
                let size = value.len() as u64 + NODE_COST;
                total = total.saturating_add(size);
                if let Some(anchor) = anchor {
                    anchor_sizes.insert(anchor, size);
                }
            }
            EventData::SequenceStart { anchor, .. } | EventData::MappingStart { anchor, .. } => {
                if open.len() >= bounds.max_depth {
                    return Err(refused(Refusal::TooDeep, Some(line), None, bounds));
                }
                let is_top_value = open.len() == 1;
                open.push(Open {
                    n_children: 0,
                    is_mapping,
                    anchor,
                    total_at_start: total,
                    line: if is_top_value { top_key_line } else { line },
                });
                total = total.saturating_add(NODE_COST);
            }
            EventData::SequenceEnd | EventData::MappingEnd => {
                if let Some(closed) = open.pop() {
                    if let Some(anchor) = closed.anchor {
                        anchor_sizes.insert(anchor, total.saturating_sub(closed.total_at_start));
                    }
                }
            }
            EventData::Alias { anchor } => {
                let size = anchor_sizes.get(&anchor).copied().unwrap_or(NODE_COST);
                total = total.saturating_add(size);
            }
            _ => {}
        }
        if total > alias_cap {
            return Err(ParseError::invalid(
                Some(line),
                format!(
                    "repetition limit exceeded: anchors and aliases (`&a`, `*a`) expand to more than {} MiB; write the values out",
                    alias_cap / (1024 * 1024)
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::ParseErrorKind;
    use crate::yaml::value::LongList;

    const BOUNDS: Bounds = Bounds {
        max_depth: 4,
        max_entries: 3,
        long_list: Some(LongList {
            key: "images",
            max_entries: 4,
        }),
    };

    #[test]
    fn depth_counts_block_and_flow_levels_alike() {
        assert!(
            screen("a: { b: [ [ x ] ] }\n", &BOUNDS).is_ok(),
            "four levels"
        );
        let err = screen("a:\n  b:\n    - [ [ x ] ]\n", &BOUNDS).unwrap_err();
        assert_eq!(err.line, Some(3));
        assert!(
            err.message.contains("nested deeper than 4 levels"),
            "{err:?}"
        );
    }

    #[test]
    fn entries_are_refused_at_the_first_one_past_the_bound() {
        assert!(screen("a: [1, 2, 3]\nb: {x: 1, y: 2, z: 3}\n", &BOUNDS).is_ok());
        assert!(
            screen("images: [a, b, c, d]\n", &BOUNDS).is_ok(),
            "its own bound"
        );
        let err = screen(
            "x: 1\nimages:\n  - a\n  - b\n  - c\n  - d\n  - e\n",
            &BOUNDS,
        )
        .unwrap_err();
        assert_eq!(err.line, Some(2), "the line of the key");
        assert_eq!(
            err.kind,
            ParseErrorKind::TooManyEntries {
                within: "images".into(),
                is_top_value: true,
                entry_line: Some(7),
                max: 4,
            }
        );
        let err = screen("a: {k: [{p: 1, q: 2, r: 3, s: 4}]}\n", &BOUNDS).unwrap_err();
        assert!(
            matches!(&err.kind, ParseErrorKind::TooManyEntries { within, is_top_value: false, .. } if within == "a"),
            "{err:?}"
        );
    }

    #[test]
    fn a_flow_collection_is_read_as_a_stream_wherever_it_starts() {
        // A flow list at the root or as a list entry could be a key: a scanner that looks
        // ahead to its end before the first event holds the whole list in memory.
        for text in [
            "[a, b, c, d, e]\n",
            "- [a, b, c, d, e]\n",
            "{images: [a, b, c, d, e, f]}\n",
        ] {
            let err = screen(text, &BOUNDS).unwrap_err();
            assert!(
                matches!(err.kind, ParseErrorKind::TooManyEntries { .. }),
                "{text}: {err:?}"
            );
        }
    }

    #[test]
    fn a_syntax_error_ends_the_screen_for_the_reader_to_report() {
        assert!(screen("a: [\n  - b: c\n", &BOUNDS).is_ok());
    }
}
