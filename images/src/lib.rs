//! images crate (being built).
