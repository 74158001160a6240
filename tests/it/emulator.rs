//! Tests for emulator.
