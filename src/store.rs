//! The job store: everything sled. Versioned manifest and job records, lifecycle transitions
//! with their durability points (SPEC §5.1), resume after a crash and incremental job keys.
//! The only module that names sled.
