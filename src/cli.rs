//! The command line (clap): `run`, `validate`, `plan`, `status`, `jobs`, `replay`, `emulator`.
