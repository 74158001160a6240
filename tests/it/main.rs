//! The one integration-test binary: a module per area (STYLE.md point 22).

mod admin;
mod cli;
mod client;
mod config;
mod emulator;
mod imaging;
mod manifest;
mod output;
mod pipeline;
mod recipes;
mod report;
mod request;
mod restart;
mod store;
mod support;
mod watcher;
