//! berth-agent (being written)
