//! The Claid-compatible emulator: an axum server that follows CONTRACT.md under `/v1` and
//! `/v1-beta1`, performs real image operations, and injects scripted faults.

pub mod imaging;
