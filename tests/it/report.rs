//! Tests for report.
