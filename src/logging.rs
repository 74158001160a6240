//! The tracing subscriber: journald-friendly text under systemd, json on request; and the rule
//! that no log line can be forged.
//!
//! Under systemd (`JOURNAL_STREAM` is set) lines carry no timestamp and no colours: journald
//! adds its own timestamp, and escape codes would end up in the journal. `RUST_LOG` filters
//! (default `info`).
//!
//! Field values (file names, Claid's messages, manifest text) may hold newlines, carriage
//! returns, terminal escapes or Unicode line separators. In the text formats every field value,
//! the message included, is written through [`crate::text::write_unsafe_escaped`]
//! ([`EscapingFields`]), so one event is always one line; log sites still wrap untrusted text in
//! [`crate::text::Escaped`], which also doubles backslashes. In the json format serde_json
//! escapes the C0 controls and [`JsonSafeWriter`] escapes the rest (DEL, C1, U+2028/U+2029,
//! bidirectional overrides) as `\uXXXX`.

use std::error::Error;
use std::fmt::{self, Write as _};
use std::io;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::{DefaultVisitor, FormatFields, Writer};

use crate::text::{is_unsafe_char, write_unsafe_escaped};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Human-readable text; plain (no time, no colour) under journald.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global subscriber. Safe to call once; later calls are ignored.
pub fn init(format: Format) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let res = match format {
        Format::Json => builder
            .json()
            .with_current_span(true)
            .with_writer(JsonSafe(io::stderr))
            .try_init(),
        Format::Text if under_journald => builder
            .fmt_fields(EscapingFields)
            .with_writer(io::stderr)
            .without_time()
            .with_ansi(false)
            .try_init(),
        Format::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder
                .fmt_fields(EscapingFields)
                .with_writer(io::stderr)
                .with_ansi(ansi)
                .try_init()
        }
    };
    // A second init (tests, or `run` after a CLI pre-init) keeps the first subscriber.
    let _ = res;
}

/// The text formats' field formatter: tracing's default layout (`message key=value …`) with
/// every value escaped, so no field can end the line or steer the terminal.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapingFields;

impl<'writer> FormatFields<'writer> for EscapingFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor(DefaultVisitor::new(writer, true));
        fields.record(&mut visitor);
        visitor.0.finish()
    }
}

/// Hands every value to tracing's default visitor behind an escaping `Debug`.
struct EscapingVisitor<'a>(DefaultVisitor<'a>);

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // As the default visitor: the message unquoted, other strings quoted.
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn Error + 'static)) {
        self.record_debug(field, &format_args!("{}", ErrorChain(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.record_debug(field, &EscapedDebug(value));
    }
}

/// An error and its sources, `outer: inner: innermost`.
struct ErrorChain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// `Debug` of the inner value with every unsafe character escaped on the way out.
struct EscapedDebug<'a>(&'a dyn fmt::Debug);

impl fmt::Debug for EscapedDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapingWrite(f), "{:?}", self.0)
    }
}

struct EscapingWrite<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for EscapingWrite<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_unsafe_escaped(self.0, s)
    }
}

/// A `MakeWriter` for the json format: wraps each writer in a [`JsonSafeWriter`].
#[derive(Debug, Clone, Copy)]
pub struct JsonSafe<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for JsonSafe<M> {
    type Writer = JsonSafeWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        JsonSafeWriter(self.0.make_writer())
    }
}

/// Writes json lines with the unsafe characters serde_json leaves raw (DEL, C1 controls,
/// U+2028/U+2029, bidirectional overrides) as `\uXXXX` escapes. They can only occur inside
/// json strings, where the escape means the same character, so the json is unchanged in
/// meaning. (serde_json already escapes the C0 controls; the line's own `\n` is kept.)
#[derive(Debug)]
pub struct JsonSafeWriter<W>(pub W);

impl<W: io::Write> io::Write for JsonSafeWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) if text.chars().any(|c| c >= '\u{7f}' && is_unsafe_char(c)) => {
                let mut safe = String::with_capacity(text.len() + 16);
                for c in text.chars() {
                    if c >= '\u{7f}' && is_unsafe_char(c) {
                        // Every unsafe char is in the basic plane: one \u escape each.
                        let _ = write!(safe, "\\u{:04x}", c as u32);
                    } else {
                        safe.push(c);
                    }
                }
                self.0.write_all(safe.as_bytes())?;
            }
            _ => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::text::Escaped;

    /// Collects everything written, for one test's subscriber.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    const EVIL: &str = "a.yaml\nERROR FORGED line\r\x1b[2K\u{85}\u{2028}\u{202e}end";

    fn log_evil() {
        let path = Path::new(EVIL);
        let err = io::Error::other(EVIL);
        let span = tracing::info_span!("manifest", manifest = %path.display());
        let _entered = span.enter();
        tracing::warn!(
            path = %path.display(),
            quoted = EVIL,
            debug = ?EVIL,
            error = &err as &(dyn Error + 'static),
            escaped = %Escaped::path(path),
            "Message with {EVIL}"
        );
    }

    fn assert_one_clean_line(out: &str) {
        assert_eq!(out.matches('\n').count(), 1, "{out:?}");
        assert!(out.ends_with('\n'), "{out:?}");
        let line = &out[..out.len() - 1];
        assert!(!line.chars().any(is_unsafe_char), "{line:?}");
        assert!(line.contains("a.yaml\\nERROR FORGED line"), "{line:?}");
    }

    #[test]
    fn text_lines_cannot_be_forged_by_any_field() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(EscapingFields)
            .with_writer(capture.clone())
            .without_time()
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, log_evil);
        let out = capture.text();
        assert_one_clean_line(&out);
        // The span field is escaped too, and an escaped field is not escaped twice.
        assert!(out.contains("manifest{manifest=a.yaml\\nERROR"), "{out:?}");
        assert!(out.contains("escaped=a.yaml\\nERROR"), "{out:?}");
    }

    #[test]
    fn json_lines_cannot_be_forged_and_stay_json() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_writer(JsonSafe(capture.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, log_evil);
        let out = capture.text();
        assert_eq!(out.matches('\n').count(), 1, "{out:?}");
        let line = out.trim_end_matches('\n');
        assert!(!line.chars().any(is_unsafe_char), "{line:?}");
        let value: serde_json::Value = serde_json::from_str(line).expect("json");
        // The escapes decode to the very same text.
        assert_eq!(value["fields"]["quoted"], EVIL);
        assert_eq!(value["span"]["manifest"], EVIL);
    }
}
