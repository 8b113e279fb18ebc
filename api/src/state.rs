//! The state every request handler shares. Its own module so that routes and the server that
//! wires them do not import each other.

use crate::bmc_service::BmcService;
use crate::metrics::HttpMetrics;
use inventory::Inventory;
use std::sync::Arc;

/// State shared by every request handler.
#[derive(Clone)]
pub struct AppState {
    /// The inventory database.
    pub inv: Inventory,
    /// HTTP counters.
    pub http_metrics: Arc<HttpMetrics>,
    /// The BMC controller.
    pub bmc: Arc<BmcService>,
    /// Image bytes.
    pub images: images::ImageStore,
    /// Largest image accepted.
    pub max_image_bytes: u64,
    /// Internal ranges URL imports may reach anyway.
    pub image_import_allow: Arc<Vec<crate::ImportRange>>,
    /// The HTTP side of booting, when the boot services run.
    pub boot: Option<crate::boot::BootHttp>,
    /// Boot server counters.
    pub pxe_metrics: Arc<pxe::Metrics>,
    /// The job engine.
    pub conductor: Arc<crate::engine::Conductor>,
    /// Failed authentications per source and token prefix.
    pub auth_limiter: crate::origin::SharedLimiter,
    /// Signs wipe certificates (`DATA_DIR/signing.key`).
    pub signing_key: Arc<trust::SigningKey>,
    /// The web dashboard's own state (TLS flag, session lifetimes).
    pub web: Arc<crate::web::WebState>,
    /// The console broker: one BMC serial session per machine, many viewers.
    pub consoles: Arc<crate::console::ConsoleHub>,
    /// Which instance brokers a console, and the tickets instances proxy them with.
    pub console_routing: Arc<crate::console::route::ConsoleRouting>,
    /// Blobs fetched from and served to other instances.
    pub peers: Arc<crate::image_peers::ImagePeers>,
}
