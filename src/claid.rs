//! The Claid API client: submit, poll (via `result_url`), download and sync upload, behind one
//! shared rate limiter; maps HTTP status and bodies to classified [`ClaidError`]s. The only
//! module that names reqwest.

pub mod request;
pub mod wire;
