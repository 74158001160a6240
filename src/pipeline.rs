//! The job scheduler: drives each job submit → poll → download → output → done, with bounded
//! concurrency, interruptible waits and error classification.
