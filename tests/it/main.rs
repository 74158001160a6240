//! The one integration-test binary: a module per area (STYLE.md point 22).

mod support;
mod request;
mod imaging;
mod emulator;
mod config;
mod manifest;
mod watcher;
mod store;
mod output;
mod report;
mod client;
mod pipeline;
mod restart;
