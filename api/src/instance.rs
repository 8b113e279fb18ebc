//! This process as one of several instances on one database (decision S1): its id (kept in
//! the data dir, so a restart is the same instance and resumes the jobs it held), its
//! heartbeat, and the leader roles that make work run on one instance at a time — the lease
//! scheduler once in all, BMC work (energy sampling, idle power-off) once per site.

use inventory::{Inventory, NewInstance, SiteScope};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often the instance's row is renewed (well inside `inventory::CLAIM_TTL_MS`).
pub const HEARTBEAT: Duration = Duration::from_secs(3);

/// The leader role of the lease scheduler (and the sweepers it runs).
pub const SCHEDULER_ROLE: &str = "scheduler";

/// This instance: its id and the machines it serves.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Stable across restarts (`DATA_DIR/instance-id`).
    pub id: String,
    /// Its site (`--site`), or every machine.
    pub scope: SiteScope,
}

/// Which machines' BMC work this instance leads right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SiteLeads {
    /// Every machine (an instance without a site).
    pub all: bool,
    /// The machines of its own site.
    pub own_site: bool,
    /// The machines without a site.
    pub unsited: bool,
}

impl SiteLeads {
    /// Whether this instance does the BMC work of a machine at `site` now.
    pub fn covers(&self, scope: &SiteScope, site: Option<&str>) -> bool {
        match site {
            _ if self.all => true,
            None => self.unsited,
            Some(s) => self.own_site && scope.site_name() == Some(s),
        }
    }
}

/// Reads the instance id from `DATA_DIR/instance-id`, making one at first start.
pub fn load_or_create_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("instance-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(32)
        .collect();
    let suffix = hex::encode(rand::random::<[u8; 4]>());
    let id = if host.is_empty() {
        suffix
    } else {
        format!("{host}-{suffix}")
    };
    std::fs::write(&path, format!("{id}\n"))?;
    Ok(id)
}

impl Instance {
    /// Registers the instance (an unknown `--site` is refused here, naming it).
    pub async fn register(
        inv: &Inventory,
        id: String,
        site: Option<String>,
        api_url: String,
    ) -> inventory::Result<Arc<Instance>> {
        let scope = inv
            .register_instance(&NewInstance {
                id: id.clone(),
                site,
                version: env!("CARGO_PKG_VERSION").to_string(),
                api_url,
            })
            .await?;
        Ok(Arc::new(Instance { id, scope }))
    }

    /// Whether this instance leads `role` now (taking or renewing it). A database error
    /// means no: the work waits for the next tick rather than risk running twice.
    pub async fn leads(&self, inv: &Inventory, role: &str) -> bool {
        match inv.lead(role, &self.id).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(role, error = %e, "cannot renew a leader role");
                false
            }
        }
    }

    /// The BMC work this instance leads now: its site's (`site:NAME`) and the unsited
    /// machines' (`site:`), or, without a site, everyone's (`site:*`).
    pub async fn site_leads(&self, inv: &Inventory) -> SiteLeads {
        match &self.scope {
            SiteScope::All => SiteLeads {
                all: self.leads(inv, "site:*").await,
                ..SiteLeads::default()
            },
            SiteScope::Site { name, .. } => SiteLeads {
                all: false,
                own_site: self.leads(inv, &format!("site:{name}")).await,
                unsited: self.leads(inv, "site:").await,
            },
        }
    }

    /// Renews the instance's heartbeat until `stop`; then gives up its leader roles and job
    /// claims, so another instance takes them at once instead of after the expiry.
    pub fn spawn_heartbeat(self: Arc<Self>, inv: Inventory, stop: pxe::Shutdown) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let beat = inv
                            .retrying("the instance heartbeat", || inv.instance_heartbeat(&self.id))
                            .await;
                        if let Err(e) = beat {
                            tracing::warn!(error = %e, "cannot renew the instance's heartbeat");
                        }
                    }
                    _ = stop.cancelled() => break,
                }
            }
            if let Err(e) = inv.resign_instance(&self.id).await {
                tracing::warn!(error = %e, "cannot hand over leader roles and jobs; they expire instead");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_leads_cover_their_own_machines_only() {
        let a = SiteScope::Site {
            id: 1,
            name: "a".into(),
        };
        let own = SiteLeads {
            own_site: true,
            ..SiteLeads::default()
        };
        assert!(own.covers(&a, Some("a")));
        assert!(!own.covers(&a, Some("b")));
        assert!(!own.covers(&a, None));
        let unsited = SiteLeads {
            unsited: true,
            ..SiteLeads::default()
        };
        assert!(unsited.covers(&a, None));
        assert!(!unsited.covers(&a, Some("a")));
        let all = SiteLeads {
            all: true,
            ..SiteLeads::default()
        };
        assert!(all.covers(&SiteScope::All, Some("b")));
    }

    #[test]
    fn the_instance_id_survives_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let first = load_or_create_id(dir.path()).expect("id");
        assert_eq!(load_or_create_id(dir.path()).expect("again"), first);
    }
}
