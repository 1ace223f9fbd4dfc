//! The actors of a replica. Each owns the writes to one entity subject within this
//! replica, so its own writes never conflict with each other; writes from other
//! replicas are caught by the journal's expected-sequence check.

pub mod instance;
pub mod task;
