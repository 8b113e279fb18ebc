//! rackshare's service layer: the HTTP API (axum) and the wiring of inventory, boot services,
//! BMC controller and images. The binary calls [`Server::start`]; everything else is behind it.
#![recursion_limit = "256"]

mod auth;
mod auth_limit;
mod bmc_service;
mod boot;
mod boot_events;
mod claim;
mod config;
pub mod console;
mod dhcp_store;

pub mod console_ssh;
mod engine;
mod error;
mod idle;
pub mod image_peers;
mod import_guard;
mod instance;
mod json;
mod lease_notices;
mod listener;
mod metrics;
mod openapi;
mod origin;
mod routes;
mod scheduler;
mod sendfile;
mod server;
mod shared_secrets;
mod state;
pub mod tls;
mod visibility;
mod web;

pub use auth_limit::AuthLimitPolicy;
pub use boot::{BootPool, BootSettings, DhcpRole};
pub use config::{Config, TlsSetting};
pub use engine::ConductorConfig;
pub use error::{ApiError, StartError};
pub use image_peers::PeerPolicy;
pub use import_guard::ImportRange;
pub use listener::{raise_open_file_limit, ConnectionLimits};
pub use server::{RunningServer, Server};
