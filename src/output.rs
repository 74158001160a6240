//! Output files: atomic writes (temp file → fsync → rename → fsync dir), the collision policy
//! and stale temp-file cleanup.
