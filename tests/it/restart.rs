//! Tests for restart.
