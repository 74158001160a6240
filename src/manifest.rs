//! Manifests (SPEC §4.1): parsing, profile → manifest → image deep-merge, and validation of the
//! whole manifest before any spend.
