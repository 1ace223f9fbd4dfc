//! Berth's wire and journal contract: every type that crosses NATS (journal records,
//! API requests and responses, commands and their outcomes), the one home of every
//! subject and stream specification, the codec, ARNs, input validation and the mapping
//! of errors to ECS error types. This crate does no I/O so that the control plane, the
//! agent, the auditor and third-party tools share one definition of each fact.

pub mod agent;
pub mod api;
pub mod arn;
pub mod codec;
pub mod command;
pub mod error;
pub mod headers;
pub mod ids;
pub mod model;
pub mod retry;
pub mod service;
pub mod streams;
pub mod subjects;
pub mod validate;

pub use error::{error_chain, ApiError, ErrorType};

/// Current time as ECS does in its JSON API: seconds since the Unix epoch, fractional.
pub fn now_epoch_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
