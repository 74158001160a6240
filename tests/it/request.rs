//! Tests for request.
