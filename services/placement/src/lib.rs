//! berth-placement: the pure placement library shared by the control plane, custom
//! schedulers and the auditor. It owns three things and does no I/O:
//! - [`demand_of`]: what one task of a definition needs (CPU, memory, host ports);
//! - the resource model of a container instance ([`remaining`], [`remaining_resources`],
//!   [`fit`], [`allocate`]): registered resources minus the `allocations` of its tasks;
//! - the [`Placer`] seam and its default [`RandomFitPlacer`].
//!
//! The placement decision itself is the conditional journal write of the instance record
//! with its new allocation; this crate only proposes it.

mod capacity;
mod demand;
mod placer;

pub use capacity::{
    allocate, fit, fit_resources, release, remaining, remaining_resources, Capacity, Shortfall,
    DYNAMIC_PORT_RANGE,
};
pub use demand::{demand_of, network_bindings, Demand, DemandError};
pub use placer::{Placement, PlacementFailure, Placer, RandomFitPlacer};
