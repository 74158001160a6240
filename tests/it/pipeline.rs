//! Tests for pipeline.
