//! berth-sim (being written)
