//! berth-audit
