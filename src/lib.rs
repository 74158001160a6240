//! claid-hotfolder: a crash-safe hot-folder daemon that edits product images in bulk through the
//! Claid.ai image API.
//!
//! # Layout
//!
//! The stages, in the order a job passes through them:
//!
//! - [`config`]: the validated configuration (with [`yaml`] for line numbers).
//! - [`watcher`]: finds stable manifests in the inbox.
//! - [`manifest`]: parses and validates a manifest into job specs.
//! - [`store`]: the sled job store and its durability points.
//! - [`pipeline`]: schedules jobs through submit, poll, download and output.
//! - [`claid`]: the API client (and the wire types shared with the emulator).
//! - [`output`]: atomic output writes; [`report`]: per-manifest reports; [`filename`]: the
//!   outbox filesystem's name limits and the names of report and error files.
//! - [`daemon`]: wiring, supervision, systemd notifications, reload and shutdown; [`signal`],
//!   [`logging`].
//! - [`admin`]: the admin socket (status, jobs, replay, health) and [`metrics`].
//! - [`cli`]: the command line.
//! - [`emulator`]: the bundled Claid-compatible emulator.

pub mod admin;
pub mod claid;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod emulator;
pub mod filename;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod report;
pub mod signal;
pub mod store;
pub mod watcher;
pub mod yaml;
