//! berth-placement: the pure placement library shared by the control plane, custom
//! schedulers and the auditor. It owns, and does no I/O for:
//! - [`demand_of`]: what one task of a definition needs (CPU, memory, host ports);
//! - the resource model of a container instance ([`remaining`], [`remaining_resources`],
//!   [`fit`], [`allocate`]): registered resources minus the `allocations` of its tasks;
//! - the ECS cluster query language ([`expr`]: [`parse`], [`evaluate`]) used by memberOf
//!   constraints and ListContainerInstances filters;
//! - placement constraints and strategies ([`constraints_from`], [`strategies_from`]) and
//!   the placers: [`StrategyPlacer`] (the ECS algorithm) and the older [`Placer`] seam with
//!   its [`RandomFitPlacer`];
//! - [`InstancePool`]: a cluster's instances in the flat shape decisions scan, kept up to
//!   date incrementally by whoever follows the journal.
//!
//! The placement decision itself is the conditional journal write of the instance record
//! with its new allocation; this crate only proposes it.

mod candidate;
mod capacity;
mod demand;
pub mod expr;
mod placer;
mod pool;
mod rules;
mod strategy_placer;

pub use candidate::Candidate;
pub use capacity::{
    allocate, fit, fit_resources, release, remaining, remaining_resources, Capacity, Shortfall,
    DYNAMIC_PORT_RANGE,
};
pub use demand::{demand_of, network_bindings, Demand, DemandError};
pub use expr::{evaluate, parse, Expr, ParseError};
pub use placer::{Placement, PlacementFailure, Placer, RandomFitPlacer};
pub use pool::{InstancePool, InstanceRecord};
pub use rules::{
    constraints_from, strategies_from, BinpackField, Constraint, PlacementError, SpreadField,
    Strategy, MAX_CONSTRAINTS, MAX_STRATEGIES,
};
pub use strategy_placer::{PlacementRequest, Promise, StrategyPlacer, JOIN_IN_FLIGHT};
