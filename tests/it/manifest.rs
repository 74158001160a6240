//! Tests for manifest.
