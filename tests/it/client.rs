//! Tests for client.
