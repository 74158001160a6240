//! The tracing subscriber: journald-friendly text under systemd, json on request.
