//! A machine's BMC: its settings (the password encrypted at rest) and its health record.

use crate::{now_ms, BmcProtocol, Error, Inventory, Result};
use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use std::collections::HashMap;

/// A BMC to attach to a machine. The URL is validated by the caller (the `bmc` crate parses it).
#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewBmc {
    /// `redfish` or `ipmi`.
    pub protocol: Option<BmcProtocol>,
    /// BMC URL.
    pub url: String,
    /// Login name.
    #[serde(default)]
    pub username: String,
    /// Password, encrypted before it is stored.
    #[serde(default)]
    pub password: Option<String>,
    /// PEM CA to verify the BMC's certificate with.
    #[serde(default)]
    pub tls_ca_pem: Option<String>,
    /// SHA-256 fingerprint of the BMC's certificate to pin.
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
    /// Skip TLS verification (audited).
    #[serde(default)]
    pub tls_insecure: bool,
    /// With no `password`: keep the one stored (an edit that does not retype it) instead of
    /// storing none.
    #[serde(default)]
    pub keep_password: bool,
}

impl std::fmt::Debug for NewBmc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewBmc")
            .field("protocol", &self.protocol)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl NewBmc {
    pub(super) fn protocol(&self) -> Result<BmcProtocol> {
        let from_url = if self.url.starts_with("redfish+http://")
            || self.url.starts_with("redfish+https://")
        {
            BmcProtocol::Redfish
        } else if self.url.starts_with("ipmi://") {
            BmcProtocol::Ipmi
        } else {
            return Err(Error::invalid(
                "bmc",
                format!(
                    "'{}' is not a BMC URL (redfish+https://host[:port][/redfish/v1/Systems/ID], redfish+http://…, or ipmi://host[:port])",
                    self.url
                ),
            ));
        };
        match self.protocol {
            Some(p) if p != from_url => Err(Error::invalid(
                "bmc.protocol",
                format!("protocol {} does not match URL {}", p.as_str(), self.url),
            )),
            _ => Ok(from_url),
        }
    }
}

/// The outcome of one BMC command, for the health record.
#[derive(Debug, Clone)]
pub enum BmcHealth {
    /// It worked; the power state if one was learnt.
    Success {
        /// Power state seen, if any.
        power_state: Option<String>,
    },
    /// It failed with this (secret-free) message.
    Failure(String),
}

/// Everything the BMC controller needs, password in clear. Never serialised.
#[derive(Clone)]
pub struct BmcAccess {
    /// Protocol.
    pub protocol: BmcProtocol,
    /// URL.
    pub url: String,
    /// Login name.
    pub username: String,
    /// Password in clear.
    pub password: Option<String>,
    /// CA PEM.
    pub tls_ca_pem: Option<String>,
    /// Pinned fingerprint.
    pub tls_fingerprint: Option<String>,
    /// Verification off.
    pub tls_insecure: bool,
    /// The machine's site: only an instance serving it calls this BMC.
    pub site: Option<String>,
}

impl std::fmt::Debug for BmcAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcAccess")
            .field("url", &self.url)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A machine's BMC settings, ciphertext included.
pub(super) const BMC_ACCESS_SELECT: &str =
    "SELECT m.name AS machine_name, b.protocol, b.url, b.username, b.password_enc, \
    b.tls_ca_pem, b.tls_fingerprint, b.tls_insecure, s.name AS site_name FROM bmcs b \
    JOIN machines m ON m.id = b.machine_id LEFT JOIN sites s ON s.id = m.site_id";

impl Inventory {
    pub(crate) async fn upsert_bmc(
        &self,
        tx: &mut Transaction<'_, Any>,
        machine_id: i64,
        b: &NewBmc,
    ) -> Result<()> {
        let protocol = b.protocol()?;
        let sealed = match &b.password {
            Some(p) => Some(self.secrets.seal(p)?),
            None if b.keep_password => {
                sqlx::query("SELECT password_enc FROM bmcs WHERE machine_id = $1")
                    .bind(machine_id)
                    .fetch_optional(&mut **tx)
                    .await?
                    .map(|r| r.try_get::<Option<String>, _>("password_enc"))
                    .transpose()?
                    .flatten()
            }
            None => None,
        };
        sqlx::query("DELETE FROM bmcs WHERE machine_id = $1")
            .bind(machine_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "INSERT INTO bmcs (machine_id, protocol, url, username, password_enc, tls_ca_pem, tls_fingerprint, tls_insecure) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(machine_id)
        .bind(protocol.as_str())
        .bind(&b.url)
        .bind(&b.username)
        .bind(sealed)
        .bind(&b.tls_ca_pem)
        .bind(&b.tls_fingerprint)
        .bind(i64::from(b.tls_insecure))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The BMC settings with the password decrypted, for the BMC controller only.
    pub async fn bmc_access(&self, name: &str) -> Result<BmcAccess> {
        let row = sqlx::query(&format!("{BMC_ACCESS_SELECT} WHERE m.name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::not_found("BMC of machine", name))?;
        self.bmc_access_from_row(&row)
    }

    /// Every machine's BMC settings, decrypted, by machine name (one query; for export).
    pub async fn bmc_accesses(&self) -> Result<HashMap<String, BmcAccess>> {
        let rows = sqlx::query(BMC_ACCESS_SELECT).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("machine_name")?, self.bmc_access_from_row(r)?)))
            .collect()
    }

    pub(super) fn bmc_access_from_row(&self, row: &AnyRow) -> Result<BmcAccess> {
        let password = match row.try_get::<Option<String>, _>("password_enc")? {
            Some(s) => Some(self.secrets.open(&s)?),
            None => None,
        };
        Ok(BmcAccess {
            protocol: row.try_get::<String, _>("protocol")?.parse()?,
            url: row.try_get("url")?,
            username: row.try_get("username")?,
            password,
            tls_ca_pem: row.try_get("tls_ca_pem")?,
            tls_fingerprint: row.try_get("tls_fingerprint")?,
            tls_insecure: row.try_get::<i64, _>("tls_insecure")? != 0,
            site: row.try_get("site_name")?,
        })
    }

    /// Records the outcome of a BMC command in the machine's BMC health record.
    pub async fn record_bmc_health(&self, name: &str, h: &BmcHealth) -> Result<()> {
        let now = now_ms();
        let q = match h {
            BmcHealth::Success { power_state } => sqlx::query(
                "UPDATE bmcs SET last_success_at = $1, consecutive_failures = 0, \
                 power_state = COALESCE($2, power_state) WHERE machine_id = (SELECT id FROM machines WHERE name = $3)",
            )
            .bind(now)
            .bind(power_state.clone()),
            BmcHealth::Failure(msg) => sqlx::query(
                "UPDATE bmcs SET last_failure_at = $1, consecutive_failures = consecutive_failures + 1, \
                 last_error = $2 WHERE machine_id = (SELECT id FROM machines WHERE name = $3)",
            )
            .bind(now)
            .bind(msg.clone()),
        };
        q.bind(name).execute(&self.writer).await?;
        Ok(())
    }
}
