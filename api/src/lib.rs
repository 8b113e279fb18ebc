//! rackshare's service layer: the HTTP API (axum) and the wiring of inventory, boot services,
//! BMC controller and images. The binary calls [`Server::start`]; everything else is behind it.
#![recursion_limit = "256"]

mod auth;
mod bmc_service;
mod boot;
mod claim;
mod config;
mod engine;
mod error;
mod idle;
mod import_guard;
mod json;
mod metrics;
mod openapi;
mod routes;
mod scheduler;
mod server;
mod state;
mod visibility;

pub use boot::{BootPool, BootSettings, DhcpRole};
pub use config::Config;
pub use engine::ConductorConfig;
pub use error::{ApiError, StartError};
pub use import_guard::ImportRange;
pub use server::{RunningServer, Server};
