//! The configuration: `RawConfig` mirrors the YAML of SPEC §3; `Config` holds validated values.
