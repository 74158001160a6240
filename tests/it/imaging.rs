//! Tests for imaging.
