//! berth-journal
