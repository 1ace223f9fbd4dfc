//! Test harness for Berth: starts real `nats-server` processes (single JetStream nodes and
//! loopback JetStream clusters), each on free ports with its own temporary store, and finds
//! the binaries of this workspace for end-to-end tests. Panics with clear messages: it is
//! only ever used from tests.

mod bins;
mod micro;
mod monitor;
mod ports;
mod server;
mod wait;

pub use bins::{nats_server_bin, workspace_bin};
pub use micro::service_instances;
pub use monitor::http_get;
pub use ports::free_port;
pub use server::{NatsCluster, NatsServer};
pub use wait::wait_for;
