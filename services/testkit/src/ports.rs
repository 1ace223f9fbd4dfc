//! Free loopback TCP ports for servers started by tests.
//!
//! Ports come from below the kernel's ephemeral range, so an outgoing connection (a client,
//! a route) cannot take a port between the moment it is chosen and the moment a server binds
//! it, or while a server is down for a restart. Each port is handed out once per process.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::ops::Range;
use std::sync::Mutex;

/// Lowest port handed out; the top is the start of the ephemeral range.
const LOWEST_PORT: u16 = 10_000;
/// Linux's default `ip_local_port_range` start, used when it cannot be read.
const DEFAULT_EPHEMERAL_START: u16 = 32_768;
const MAX_TRIES: usize = 10_000;

static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `count` distinct free ports, none handed out before by this process.
pub(crate) fn free_ports(count: usize) -> Vec<u16> {
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let range = candidate_range();
    let random = RandomState::new();
    let mut listeners = Vec::with_capacity(count);
    let mut tries = 0;
    while listeners.len() < count {
        tries += 1;
        assert!(
            tries <= MAX_TRIES,
            "no free port found on 127.0.0.1 in {range:?} after {MAX_TRIES} tries"
        );
        let span = u64::from(range.end - range.start);
        let offset = u16::try_from(random.hash_one(tries) % span).expect("offset below span");
        let port = range.start + offset;
        if handed_out.contains(&port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            handed_out.insert(port);
            listeners.push(listener);
        }
    }
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .expect("local address of a bound listener")
                .port()
        })
        .collect()
}

fn candidate_range() -> Range<u16> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START);
    if ephemeral_start > LOWEST_PORT + 1_000 {
        LOWEST_PORT..ephemeral_start
    } else {
        LOWEST_PORT..u16::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        TcpListener::bind(("127.0.0.1", port)).expect("free port is bindable");
    }

    #[test]
    fn free_ports_are_distinct_and_never_repeated() {
        let mut ports = free_ports(9);
        ports.extend(free_ports(9));
        assert_eq!(ports.iter().collect::<BTreeSet<_>>().len(), 18);
    }
}
