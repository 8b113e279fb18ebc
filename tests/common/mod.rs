//! Harness for end-to-end tests: the real `rackshare` binary, real HTTP, real databases.
//! `server` runs the service, `lab` puts it in a namespace with boot files, `clients` plays the
//! machine's side.
#![allow(dead_code)]

pub mod browser;
mod clients;
mod instances;
mod lab;
mod server;

// Each test binary uses a different part of the harness.
#[allow(unused_imports)]
pub use clients::*;
#[allow(unused_imports)]
pub use instances::*;
#[allow(unused_imports)]
pub use lab::*;
#[allow(unused_imports)]
pub use server::*;
