//! The decisions of the replica's background loops, as pure functions: each planner
//! takes a snapshot of what the view holds (and, where time matters, the time as an
//! argument) and returns the actions to take, without touching the journal, the view or
//! the clock. The loops around them (`liveness.rs`, `janitor.rs`, `reconcile.rs`) stay
//! thin: take a snapshot, plan, execute the actions through the actors and the journal.
//! Unit tests drive the planners with fake snapshots and chosen times.

pub mod janitor;
pub mod liveness;
pub mod reconcile;
pub mod service;
