//! Shared test support: temp dirs, config builder, emulator handle, wait_until.
