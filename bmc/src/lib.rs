//! bmc crate (being built).
