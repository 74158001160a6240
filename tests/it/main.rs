//! The one integration-test binary: a module per area (STYLE.md point 22).

mod client;
mod config;
mod emulator;
mod imaging;
mod manifest;
mod output;
mod pipeline;
mod report;
mod request;
mod restart;
mod store;
mod support;
mod watcher;
