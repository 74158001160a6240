//! The tracing subscriber: journald-friendly text under systemd, json on request.
//!
//! Under systemd (`JOURNAL_STREAM` is set) lines carry no timestamp and no colours: journald
//! adds its own timestamp, and escape codes would end up in the journal. `RUST_LOG` filters
//! (default `info`).

use tracing_subscriber::EnvFilter;

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let res = match format {
        Format::Json => builder.json().with_current_span(true).try_init(),
        Format::Text if under_journald => builder.without_time().with_ansi(false).try_init(),
        Format::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).try_init()
        }
    };
    // A second init (tests, or `run` after a CLI pre-init) keeps the first subscriber.
    let _ = res;
}
