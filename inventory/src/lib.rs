//! inventory crate (being built).
