//! Tests for watcher.
