//! pxe crate (being built).
