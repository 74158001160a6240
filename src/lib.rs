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
//! - [`store`]: the sled job store, its durability points, output reservations and counts.
//! - [`lifecycle`]: the phases of a manifest run and their transitions.
//! - [`pipeline`]: intake, the submitter, each job's task (submit, poll, download, output)
//!   and the finisher (reports, archive).
//! - [`codes`]: the stable names of failure codes and job states.
//! - [`claid`]: the API client (and the wire types shared with the emulator); [`retry`]: the
//!   one retry policy for its calls.
//! - [`output`]: atomic output writes; [`report`]: per-manifest reports; [`filename`]: the
//!   outbox filesystem's name limits and the names of report and error files.
//! - [`daemon`]: wiring, supervision, systemd notifications, reload and shutdown; [`signal`],
//!   [`logging`].
//! - [`admin`]: the admin socket (status, jobs, replay, health) and [`metrics`]; [`webhook`]:
//!   the receiver of Claid's signed webhooks; both run on [`http_server`], the bounded server.
//! - [`activity`]: what the dashboard and alerts read over time (throughput series, the outbox's
//!   disk, progress); [`web`]: the dashboard; [`alerts`]: messages to webhooks.
//! - [`cli`]: the command line; [`exit`]: its one table of exit codes.
//! - [`text`]: untrusted text escaped for logs; [`os_error`]: OS errors named by errno.
//! - [`objects`]: object storage (S3 and S3-compatible) for storage inputs and outputs.
//! - [`emulator`]: the bundled Claid-compatible emulator.

pub mod activity;
pub mod admin;
pub mod alerts;
pub mod claid;
pub mod cli;
pub mod codes;
pub mod config;
pub mod daemon;
pub mod emulator;
pub mod exit;
pub mod filename;
pub mod http_server;
pub mod lifecycle;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod objects;
pub mod os_error;
pub mod output;
pub mod pipeline;
pub mod report;
pub mod retry;
pub mod signal;
pub mod storages;
pub mod store;
pub mod text;
pub mod watcher;
pub mod web;
pub mod webhook;
pub mod yaml;
