//! The tracing subscriber: journald-friendly text under systemd, json on request; and the rule
//! that no log line can be forged.
//!
//! Under systemd (`JOURNAL_STREAM` is set) lines carry no timestamp and no colours: journald
//! adds its own timestamp, and escape codes would end up in the journal. `RUST_LOG` filters
//! (default `info`); the storage client's (object_store's) own lines only from `warn` up unless
//! `RUST_LOG` names `object_store`.
//!
//! Field values (file names, Claid's messages, manifest text) may hold newlines, carriage
//! returns, terminal escapes or Unicode line separators. In the text formats every field value,
//! the message included, is written through [`crate::text::write_unsafe_escaped`]
//! ([`EscapingFields`]), so one event is always one line; log sites still wrap untrusted text in
//! [`crate::text::Escaped`], which also doubles backslashes. In the json format serde_json
//! escapes the C0 controls and [`JsonSafeWriter`] escapes the rest (DEL, C1, U+2028/U+2029,
//! bidirectional overrides) as `\uXXXX`.
//!
//! No field value is longer than [`crate::text::LOG_VALUE_MAX`] bytes: a longer one (Claid's
//! message, which may be megabytes long) is cut, followed by how much was
//! ([`crate::text::capped_at`]), in both formats.
//!
//! No log line shows a URL's credentials: in both formats every URL in a value (an input with
//! a password or a presigned signature, also as Claid's messages quote it) is written with them
//! replaced by `REDACTED` ([`crate::text::redact_urls_in`]).
//!
//! Lines are written through a [`Terminal`], which draws them above the progress bar of
//! `run --once` instead of across it.

use std::error::Error;
use std::fmt::{self, Write as _};
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

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

/// `filter` (from `RUST_LOG`, `rust_log`) with the storage client's own lines kept to warnings
/// unless `RUST_LOG` names it: object_store logs each of its retries at `info` (972 lines in a
/// 12 s outage of a bucket, burying the daemon's one warning that tells it).
fn with_quiet_dependencies(rust_log: Option<&str>, filter: EnvFilter) -> EnvFilter {
    use tracing_subscriber::filter::LevelFilter;
    // The level that applies to object_store: the filter's own for targets it does not name
    // (its last bare level; none means off). At `warn` or quieter it keeps them out already,
    // and the directive would let warnings through `RUST_LOG=error,claid_hotfolder=info`.
    let applies = match rust_log {
        None => Some(LevelFilter::INFO),
        Some(text) if text.contains("object_store") => return filter,
        Some(text) => text
            .rsplit(',')
            .find_map(|directive| directive.trim().parse::<LevelFilter>().ok()),
    };
    if applies.is_none_or(|level| level <= LevelFilter::WARN) {
        return filter;
    }
    match "object_store=warn".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

/// Installs the global subscriber, writing to stderr through the returned [`Terminal`] (which
/// `run --once` hands its progress bar). Safe to call once; later calls keep the first
/// subscriber.
pub fn init(format: Format) -> Terminal {
    let filter = with_quiet_dependencies(
        std::env::var("RUST_LOG").ok().as_deref(),
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    );
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let terminal = Terminal::default();
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let res = match format {
        Format::Json => builder
            .json()
            .with_current_span(true)
            .with_writer(JsonSafe(terminal.clone()))
            .try_init(),
        Format::Text if under_journald => builder
            .fmt_fields(EscapingFields)
            .with_writer(terminal.clone())
            .without_time()
            .with_ansi(false)
            .try_init(),
        Format::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder
                .fmt_fields(EscapingFields)
                .with_writer(terminal.clone())
                .with_ansi(ansi)
                .try_init()
        }
    };
    // A second init (tests, or `run` after a CLI pre-init) keeps the first subscriber.
    let _ = res;
    terminal
}

/// Where log lines go (stderr), and the progress bar drawn there, if any. While a bar is
/// shown, each line is written inside [`indicatif::ProgressBar::suspend`]: the bar is cleared,
/// the line written, the bar drawn again below it, so neither overwrites the other.
#[derive(Clone)]
pub struct Terminal {
    /// The bar being shown; `None` most of the time.
    bar: Arc<Mutex<Option<indicatif::ProgressBar>>>,
    /// stderr, or a buffer in tests.
    sink: Arc<Mutex<dyn io::Write + Send>>,
}

impl fmt::Debug for Terminal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Terminal")
            .field("bar_shown", &lock(&self.bar).is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Terminal {
    fn default() -> Self {
        Terminal::with_sink(io::stderr())
    }
}

impl Terminal {
    /// A terminal whose lines go to `sink` instead of stderr.
    pub fn with_sink(sink: impl io::Write + Send + 'static) -> Terminal {
        Terminal {
            bar: Arc::new(Mutex::new(None)),
            sink: Arc::new(Mutex::new(sink)),
        }
    }

    /// Shows `bar` until the guard is dropped: log lines are written above it meanwhile.
    pub fn show(&self, bar: indicatif::ProgressBar) -> ShownBar {
        *lock(&self.bar) = Some(bar);
        ShownBar {
            bar: self.bar.clone(),
        }
    }

    /// Writes one complete log line (or several), around the bar if one is shown.
    fn write_lines(&self, bytes: &[u8]) -> io::Result<()> {
        let bar = lock(&self.bar).clone();
        let write = || {
            let mut sink = lock(&self.sink);
            sink.write_all(bytes).and_then(|()| sink.flush())
        };
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

/// Keeps a bar shown on a [`Terminal`]; dropping it stops routing lines around the bar.
#[must_use = "the bar is shown only while this lives"]
pub struct ShownBar {
    bar: Arc<Mutex<Option<indicatif::ProgressBar>>>,
}

impl Drop for ShownBar {
    fn drop(&mut self) {
        lock(&self.bar).take();
    }
}

/// A poisoned lock only means another thread panicked while logging: keep logging.
fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<'a> MakeWriter<'a> for Terminal {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            terminal: self.clone(),
            buf: Vec::new(),
        }
    }
}

/// Collects one event's output and writes it as a whole when the event is done (dropped), so
/// a line is never split around a redraw of the bar.
pub struct LineWriter {
    terminal: Terminal,
    buf: Vec<u8>,
}

impl io::Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            // Nowhere to report a failed write of a log line.
            let _ = self.terminal.write_lines(&self.buf);
        }
    }
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
        // Whole, so that a URL's credentials are redacted however the value is written.
        let text = format!("{:?}", self.0);
        let text = crate::text::redact_urls_in(&text);
        match crate::text::capped_at(&text, crate::text::LOG_VALUE_MAX) {
            // A quoted value cut keeps its closing quote: the fields after it stay fields.
            std::borrow::Cow::Owned(mut cut) if text.starts_with('"') => {
                cut.push('"');
                write_unsafe_escaped(f, &cut)
            }
            capped => write_unsafe_escaped(f, &capped),
        }
    }
}

/// A json line with a string longer than [`crate::text::LOG_VALUE_MAX`] bytes, written again
/// with every string capped ([`crate::text::capped_at`]); `None` for a line that has none (or
/// is no json object, which is written as it is).
fn capped_json_line(line: &[u8]) -> Option<Vec<u8>> {
    use crate::text::LOG_VALUE_MAX;
    fn cap(value: &mut serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(text) => match crate::text::capped_at(text, LOG_VALUE_MAX) {
                std::borrow::Cow::Owned(cut) => {
                    *text = cut;
                    true
                }
                std::borrow::Cow::Borrowed(_) => false,
            },
            serde_json::Value::Array(items) => items.iter_mut().fold(false, |cut, v| cap(v) | cut),
            serde_json::Value::Object(map) => map.values_mut().fold(false, |cut, v| cap(v) | cut),
            _ => false,
        }
    }
    if line.len() <= LOG_VALUE_MAX {
        return None;
    }
    let mut value: serde_json::Value = serde_json::from_slice(line).ok()?;
    if !cap(&mut value) {
        return None;
    }
    let mut out = serde_json::to_vec(&value).ok()?;
    if line.ends_with(b"\n") {
        out.push(b'\n');
    }
    Some(out)
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
        // A line whose URLs carry credentials is written with them redacted; before a long
        // value is cut, which could cut a URL before its `@` and leave its password unseen.
        let redacted = std::str::from_utf8(buf)
            .ok()
            .map(crate::text::redact_urls_in)
            .filter(|text| matches!(text, std::borrow::Cow::Owned(_)));
        let line = redacted.as_deref().map_or(buf, str::as_bytes);
        let capped = capped_json_line(line);
        let line = capped.as_deref().unwrap_or(line);
        match std::str::from_utf8(line) {
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
            _ => self.0.write_all(line)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Log lines kept in memory, for unit tests that check what the daemon says.
#[cfg(test)]
pub(crate) mod captured {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    /// Collects everything written, for one test's subscriber.
    #[derive(Clone, Default)]
    pub struct Capture(Arc<Mutex<Vec<u8>>>);

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
        /// Everything written so far.
        pub fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }

        /// A text-format subscriber (no time, no colour) that writes here.
        pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + use<> {
            tracing_subscriber::fmt()
                .with_writer(self.clone())
                .without_time()
                .with_ansi(false)
                .finish()
        }
    }

    /// What `log` writes in the text format.
    pub fn logged(log: impl FnOnce()) -> String {
        let capture = Capture::default();
        tracing::subscriber::with_default(capture.subscriber(), log);
        capture.text()
    }
}

#[cfg(test)]
mod tests {
    use super::captured::Capture;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::text::Escaped;

    /// The storage client's retry lines are kept to warnings under a verbose filter only,
    /// and never against a `RUST_LOG` that names it.
    #[test]
    fn the_storage_clients_lines_are_quietened_only_where_they_would_flood() {
        let shown = |rust_log: &str| {
            with_quiet_dependencies(Some(rust_log), EnvFilter::new(rust_log)).to_string()
        };
        assert!(
            shown("info").contains("object_store=warn"),
            "{}",
            shown("info")
        );
        assert!(shown("debug,claid_hotfolder=trace").contains("object_store=warn"));
        // A quieter level for the targets it does not name keeps their warnings out already:
        // a directive would let them through.
        for quiet in [
            "error",
            "off",
            "warn,claid_hotfolder=debug",
            "error,claid_hotfolder=info",
            "claid_hotfolder=debug",
        ] {
            assert!(
                !shown(quiet).contains("object_store"),
                "{quiet}: {}",
                shown(quiet)
            );
        }
        let named = shown("info,object_store=debug");
        assert!(
            named.contains("object_store=debug") && !named.contains("object_store=warn"),
            "{named}"
        );
    }

    /// The json format's lines show no URL credentials either.
    #[test]
    fn json_lines_show_no_url_credentials() {
        use std::io::Write as _;
        let mut out = JsonSafeWriter(Vec::new());
        out.write_all(br#"{"fields":{"input":"http://u:pw@h/a.png?token=T"}}"#)
            .unwrap();
        let line = String::from_utf8(out.0).unwrap();
        assert_eq!(
            line,
            r#"{"fields":{"input":"http://u:REDACTED@h/a.png?token=REDACTED"}}"#
        );
        // A URL quoted inside a JSON string (`\"…\"`) keeps the escape after it: still JSON.
        let mut out = JsonSafeWriter(Vec::new());
        out.write_all(br#"{"fields":{"reason":"cannot fetch \"https://h/a.png?sig=S\""}}"#)
            .unwrap();
        let line = String::from_utf8(out.0).unwrap();
        assert!(
            serde_json::from_str::<serde_json::Value>(&line).is_ok(),
            "{line}"
        );
        assert!(line.contains("sig=REDACTED"), "{line}");
    }

    /// A field value of any length (Claid's message may be megabytes long) is cut to
    /// `LOG_VALUE_MAX` bytes and how much was cut, in both formats.
    #[test]
    fn long_field_values_are_capped_in_both_formats() {
        let long = format!("start {} end", "x".repeat(200_000));
        let log = || tracing::warn!(reason = %long, "Job failed");
        let out = logged_as_text(log);
        assert!(
            out.len() < 2 * crate::text::LOG_VALUE_MAX,
            "{} bytes",
            out.len()
        );
        assert!(out.contains("reason=start xxx"), "{out}");
        assert!(out.contains("… (") && out.contains(" more bytes)"), "{out}");
        assert!(!out.contains(" end"), "the tail is cut");
        assert_eq!(out.matches('\n').count(), 1);

        let out = logged_as_json(log);
        assert!(
            out.len() < 2 * crate::text::LOG_VALUE_MAX,
            "{} bytes",
            out.len()
        );
        assert_eq!(out.matches('\n').count(), 1);
        let value: serde_json::Value = serde_json::from_str(out.trim_end()).expect("json");
        let reason = value["fields"]["reason"].as_str().expect("reason");
        assert!(reason.starts_with("start xxx"), "{reason}");
        assert!(reason.ends_with(" more bytes)"), "{reason}");
        assert_eq!(value["fields"]["message"], "Job failed", "the rest kept");
        // A URL whose password the cut would fall in: redacted first, so none of it shows.
        let url = format!(
            "{} https://user:Zq9PwSecret@host/a.png",
            "x".repeat(crate::text::LOG_VALUE_MAX - 20)
        );
        let log = || tracing::warn!(reason = %url, after = "kept", "Job failed");
        for out in [logged_as_text(log), logged_as_json(log)] {
            assert!(!out.contains("Zq9P"), "{}", &out[out.len() - 200..]);
            assert!(out.contains("user:REDA"), "{}", &out[out.len() - 200..]);
        }
        // A quoted value cut keeps its closing quote, so the next field is still one.
        let out = logged_as_text(|| {
            tracing::warn!(reason = long.as_str(), after = "kept", "Job failed");
        });
        assert!(
            out.contains(" more bytes)\" after=\"kept\""),
            "{}",
            &out[out.len() - 200..]
        );
    }

    /// What `log` writes in the text format, as the daemon configures it (no time, no colour).
    fn logged_as_text(log: impl FnOnce()) -> String {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(EscapingFields)
            .with_writer(capture.clone())
            .without_time()
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        capture.text()
    }

    /// What `log` writes in the json format, as the daemon configures it.
    fn logged_as_json(log: impl FnOnce()) -> String {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_writer(JsonSafe(capture.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        capture.text()
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
        let out = logged_as_text(log_evil);
        assert_one_clean_line(&out);
        // The span field is escaped too, and an escaped field is not escaped twice.
        assert!(out.contains("manifest{manifest=a.yaml\\nERROR"), "{out:?}");
        assert!(out.contains("escaped=a.yaml\\nERROR"), "{out:?}");
    }

    #[test]
    fn json_lines_cannot_be_forged_and_stay_json() {
        let out = logged_as_json(log_evil);
        assert_eq!(out.matches('\n').count(), 1, "{out:?}");
        let line = out.trim_end_matches('\n');
        assert!(!line.chars().any(is_unsafe_char), "{line:?}");
        let value: serde_json::Value = serde_json::from_str(line).expect("json");
        // The escapes decode to the very same text.
        assert_eq!(value["fields"]["quoted"], EVIL);
        assert_eq!(value["span"]["manifest"], EVIL);
    }

    /// A terminal screen, enough of one to see whether two writers tear a line: rows of
    /// characters, a cursor, `\n`, `\r`, clearing a line and moving the cursor up or down.
    #[derive(Debug, Default)]
    struct Screen {
        rows: Vec<Vec<char>>,
        row: usize,
        col: usize,
    }

    impl Screen {
        fn put(&mut self, text: &str) {
            for c in text.chars() {
                match c {
                    '\n' => {
                        self.row += 1;
                        self.col = 0;
                    }
                    '\r' => self.col = 0,
                    c => {
                        while self.rows.len() <= self.row {
                            self.rows.push(Vec::new());
                        }
                        let line = &mut self.rows[self.row];
                        while line.len() < self.col {
                            line.push(' ');
                        }
                        if self.col < line.len() {
                            line[self.col] = c;
                        } else {
                            line.push(c);
                        }
                        self.col += 1;
                    }
                }
            }
        }

        fn text(&self) -> Vec<String> {
            self.rows
                .iter()
                .map(|row| row.iter().collect::<String>().trim_end().to_owned())
                .filter(|row| !row.is_empty())
                .collect()
        }
    }

    /// The screen as indicatif draws on it.
    #[derive(Debug, Clone)]
    struct ScreenTerm(Arc<Mutex<Screen>>);

    impl indicatif::TermLike for ScreenTerm {
        fn width(&self) -> u16 {
            40
        }
        fn move_cursor_up(&self, n: usize) -> io::Result<()> {
            let mut screen = self.0.lock().unwrap();
            screen.row = screen.row.saturating_sub(n);
            Ok(())
        }
        fn move_cursor_down(&self, n: usize) -> io::Result<()> {
            self.0.lock().unwrap().row += n;
            Ok(())
        }
        fn move_cursor_right(&self, n: usize) -> io::Result<()> {
            self.0.lock().unwrap().col += n;
            Ok(())
        }
        fn move_cursor_left(&self, n: usize) -> io::Result<()> {
            let mut screen = self.0.lock().unwrap();
            screen.col = screen.col.saturating_sub(n);
            Ok(())
        }
        fn write_line(&self, s: &str) -> io::Result<()> {
            self.0.lock().unwrap().put(&format!("{s}\n"));
            Ok(())
        }
        fn write_str(&self, s: &str) -> io::Result<()> {
            self.0.lock().unwrap().put(s);
            Ok(())
        }
        fn clear_line(&self) -> io::Result<()> {
            let mut screen = self.0.lock().unwrap();
            let row = screen.row;
            if let Some(line) = screen.rows.get_mut(row) {
                line.clear();
            }
            screen.col = 0;
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The same screen as the log lines reach it (stderr).
    impl io::Write for ScreenTerm {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().put(&String::from_utf8_lossy(buf));
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Draws a bar and writes two log lines between its updates (each line in two writes, as
    /// a formatter may); `shown` routes the lines around the bar. Returns the screen's rows.
    fn screen_after_logging(shown: bool) -> Vec<String> {
        let screen = ScreenTerm(Arc::new(Mutex::new(Screen::default())));
        let terminal = Terminal::with_sink(screen.clone());
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(10),
            indicatif::ProgressDrawTarget::term_like(Box::new(screen.clone())),
        );
        bar.set_style(indicatif::ProgressStyle::with_template("{pos}/{len} images").unwrap());
        let guard = shown.then(|| terminal.show(bar.clone()));
        bar.set_position(1);
        for (n, word) in ["one", "two"].into_iter().enumerate() {
            let mut writer = terminal.make_writer();
            io::Write::write_all(&mut writer, b"WARN line ").unwrap();
            io::Write::write_all(&mut writer, format!("{word}\n").as_bytes()).unwrap();
            drop(writer);
            bar.set_position(n as u64 + 2);
        }
        drop(guard);
        screen.0.lock().unwrap().text()
    }

    #[test]
    fn log_lines_are_written_above_the_progress_bar_never_across_it() {
        // Without the bar shown on the terminal, a line lands on the bar's row: the tearing
        // this guards against, seen by the same screen.
        let torn = screen_after_logging(false);
        assert!(
            torn.iter()
                .any(|row| row.contains("images") && row.contains("WARN")),
            "{torn:?}"
        );
        let rows = screen_after_logging(true);
        assert_eq!(
            rows,
            ["WARN line one", "WARN line two", "3/10 images"],
            "each log line on a row of its own, the bar redrawn below the last"
        );
    }

    #[test]
    fn without_a_bar_lines_go_straight_to_the_sink() {
        let screen = ScreenTerm(Arc::new(Mutex::new(Screen::default())));
        let terminal = Terminal::with_sink(screen.clone());
        let shown = terminal.show(indicatif::ProgressBar::hidden());
        drop(shown);
        let mut writer = terminal.make_writer();
        io::Write::write_all(&mut writer, b"INFO plain\n").unwrap();
        drop(writer);
        assert_eq!(screen.0.lock().unwrap().text(), ["INFO plain"]);
    }
}
