//! ECS services: request checks, how the API presents a service, and the service
//! scheduler that keeps each service's tasks running and rolls its deployments.

pub mod present;
pub mod scheduler;
pub mod validate;
