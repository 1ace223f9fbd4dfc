//! Free loopback TCP ports for servers started by tests.

use std::net::TcpListener;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `count` distinct free ports: every listener is held until all are chosen.
pub(crate) fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0 to find a free port"))
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        TcpListener::bind(("127.0.0.1", port)).expect("free port is bindable");
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(9);
        assert_eq!(ports.iter().collect::<BTreeSet<_>>().len(), 9);
    }
}
