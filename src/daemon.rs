//! Wiring and supervision: startup order, the cancellation token and task tracker, two-phase
//! shutdown, and the fatal error type.
