//! The in-memory view (placeholder until written).
