//! api crate (being built).
