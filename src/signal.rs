//! A future that completes on SIGTERM or SIGINT and logs which one arrived.
