//! The screen every YAML text passes before serde_norway sees it: one streaming pass over
//! yaml-rust2's events that refuses a document nested too deeply, a list or mapping with too
//! many entries, or aliases that expand to too much data, as soon as the bound is passed.
//!
//! Why a pass of its own: serde_norway loads every event of a document into memory before the
//! first value is built (≈ 190 bytes an event: 1.5 GB for a 16 MiB list of 8 million entries),
//! and its libyaml scanner re-checks every open flow level at each token, so 1 MB of `[` takes
//! minutes. This pass keeps only the open levels, and stops at the first level past the bound,
//! so its cost is linear in the part of the text it reads. yaml-rust2's scanner has the same
//! per-level cost, which the depth bound keeps small.
//!
//! Syntax errors are serde_norway's to report (its messages are the ones users see): on one,
//! this pass stops and only checks the flow nesting of the text with a byte scan.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

use crate::yaml::value::{Bounds, Refusal};
use crate::yaml::{ParseError, refused};

/// Floor of the data a document may expand to through aliases, in approximate bytes (scalar
/// length plus [`NODE_COST`] per node); the cap is this or [`ALIAS_EXPANSION_FACTOR`] times
/// the text, whichever is larger. serde_norway bounds the *number* of alias jumps, not their
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
    /// Anchor id (0 = none) and the expanded size when it opened, to size the anchor.
    anchor: usize,
    total_at_start: u64,
    /// Line of the key it is the value of (top-level values only), else where it starts.
    line: usize,
}

/// Checks `text` (BOM already stripped) against `bounds` and the alias-expansion cap.
pub fn screen(text: &str, bounds: &Bounds) -> Result<(), ParseError> {
    let alias_cap =
        MIN_ALIAS_EXPANSION.max((text.len() as u64).saturating_mul(ALIAS_EXPANSION_FACTOR));
    let mut parser = Parser::new_from_str(text);
    let mut open: Vec<Open> = Vec::new();
    let mut total: u64 = 0;
    let mut anchor_sizes: HashMap<usize, u64> = HashMap::new();
    // The top-level key whose value is being read, and its line.
    let mut top_key = String::new();
    let mut top_key_line = 0;
    loop {
        let (event, mark) = match parser.next_token() {
            Ok(next) => next,
            Err(_) => return check_flow_depth(text, bounds),
        };
        let line = mark.line();
        let is_node = matches!(
            event,
            Event::Scalar(..)
                | Event::Alias(_)
                | Event::SequenceStart(..)
                | Event::MappingStart(..)
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
        let is_top_key = open.len() == 1
            && open[0].is_mapping
            && open[0].n_children % 2 == 1
            && matches!(event, Event::Scalar(..));
        match event {
            Event::StreamEnd => return Ok(()),
            Event::Scalar(value, _, anchor, _) => {
                if is_top_key {
                    top_key.clear();
                    top_key.push_str(&value);
                    top_key_line = line;
                }
                let size = value.len() as u64 + NODE_COST;
                total = total.saturating_add(size);
                if anchor > 0 {
                    anchor_sizes.insert(anchor, size);
                }
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if open.len() >= bounds.max_depth {
                    return Err(refused(Refusal::TooDeep, Some(line), None, bounds));
                }
                let is_top_value = open.len() == 1;
                open.push(Open {
                    n_children: 0,
                    is_mapping: matches!(event, Event::MappingStart(..)),
                    anchor,
                    total_at_start: total,
                    line: if is_top_value { top_key_line } else { line },
                });
                total = total.saturating_add(NODE_COST);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(closed) = open.pop() {
                    if closed.anchor > 0 {
                        anchor_sizes
                            .insert(closed.anchor, total.saturating_sub(closed.total_at_start));
                    }
                }
            }
            Event::Alias(anchor) => {
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

/// After a syntax error the events stop; serde_norway's scanner would still read on, so the
/// flow nesting of the whole text is bounded by a byte scan: `[` and `{` outside quotes and
/// comments open a level, `]` and `}` close one. Block nesting costs libyaml nothing extra.
fn check_flow_depth(text: &str, bounds: &Bounds) -> Result<(), ParseError> {
    let mut depth = 0usize;
    let mut line = 1;
    let mut quote: Option<u8> = None;
    let mut in_comment = false;
    let mut prev = b'\n';
    let mut escaped = false;
    for &byte in text.as_bytes() {
        if byte == b'\n' {
            line += 1;
            in_comment = false;
        }
        if in_comment {
            prev = byte;
            continue;
        }
        match quote {
            Some(q) => {
                if q == b'"' && byte == b'\\' && !escaped {
                    escaped = true;
                    prev = byte;
                    continue;
                }
                if byte == q && !escaped {
                    quote = None;
                }
                escaped = false;
            }
            None => match byte {
                b'#' if prev.is_ascii_whitespace() => in_comment = true,
                b'\'' | b'"' if prev.is_ascii_whitespace() || b"[{,:".contains(&prev) => {
                    quote = Some(byte);
                }
                b'[' | b'{' => {
                    depth += 1;
                    if depth > bounds.max_depth {
                        return Err(refused(Refusal::TooDeep, Some(line), None, bounds));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        prev = byte;
    }
    Ok(())
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
    fn a_syntax_error_leaves_the_flow_depth_checked() {
        let text = format!("a: [\n  - b: c\n: : {}", "[".repeat(100));
        let err = screen(&text, &BOUNDS).unwrap_err();
        assert_eq!(err.line, Some(3));
        assert!(screen("a: \"[[[[[[\" #[[[[[[\nb: ]\n", &BOUNDS).is_ok());
    }
}
