//! berth-cli (being written)
