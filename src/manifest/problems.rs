//! The problems of one manifest as validation finds them: each with the dotted path of the
//! field it concerns, capped at [`MAX_PROBLEMS`], and given its line only at the end, by one
//! line-mapping pass over the text that records just the paths the problems name.

use crate::manifest::{MAX_PROBLEMS, Problem};
use crate::yaml::lines::LineMap;

/// A problem before line lookup: the dotted path it concerns, and a fallback path.
pub struct Pending {
    /// Dotted path shown in the message and looked up first (`images[3].output`).
    pub path: String,
    /// Looked up when `path` is not in the document (a value merged from elsewhere).
    pub fallback: Option<String>,
    pub message: String,
}

#[derive(Default)]
pub struct Collector {
    pub pending: Vec<Pending>,
    /// Problems beyond the cap, only counted.
    pub more: usize,
}

impl Collector {
    pub fn push(&mut self, path: impl Into<String>, fallback: Option<String>, message: String) {
        if self.pending.len() >= MAX_PROBLEMS {
            self.more += 1;
            return;
        }
        self.pending.push(Pending {
            path: path.into(),
            fallback,
            message: crate::text::unsafe_escaped(message),
        });
    }

    pub fn add(&mut self, path: &str, message: String) {
        self.push(path, None, message);
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.more == 0
    }

    /// Resolves lines (mapping only the paths named) and renders the final list.
    pub fn finish(self, text: &str) -> Vec<Problem> {
        let paths = self
            .pending
            .iter()
            .flat_map(|p| std::iter::once(p.path.as_str()).chain(p.fallback.as_deref()));
        let lines = LineMap::build_for(text, paths);
        let mut problems = Vec::with_capacity(self.pending.len() + 1);
        for pending in self.pending {
            let line = lines
                .exact(&pending.path)
                .or_else(|| pending.fallback.as_deref().and_then(|f| lines.exact(f)))
                .or_else(|| lines.line(&pending.path));
            let message = if pending.path.is_empty() {
                pending.message
            } else {
                format!("{}: {}", pending.path, pending.message)
            };
            problems.push(Problem { line, message });
        }
        problems.sort_by_key(|p| p.line.unwrap_or(0));
        if self.more > 0 {
            problems.push(Problem {
                line: None,
                message: format!("… and {} more problems", self.more),
            });
        }
        problems
    }
}
