//! The one integration-test binary: a module per area (STYLE.md point 22).

mod admin;
mod alerts;
mod cli;
mod client;
mod config;
mod corpus;
mod emulator;
mod faults;
mod imaging;
mod lifecycle;
mod manifest;
mod output;
mod package;
mod pipeline;
mod props;
mod recipes;
mod report;
mod request;
mod restart;
mod security;
mod soak;
mod store;
mod support;
mod watcher;
mod web;
