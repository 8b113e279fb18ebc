//! Reading machines: one, lists (as models or straight to JSON), counts, boot identities.

use super::stream::{machine_docs_sql, DocAs};
use super::*;
use crate::{Error, Inventory, MacAddress, Machine, MachineState, Nic, Result};
use sqlx::Row;
use std::collections::HashMap;

impl Inventory {
    pub(super) async fn attach_nics(&self, machines: &mut [Machine]) -> Result<()> {
        if machines.is_empty() {
            return Ok(());
        }
        // One query for all NICs beats one per machine by two orders of magnitude at 10k.
        let rows = if machines.len() == 1 {
            sqlx::query("SELECT machine_id, mac, name, pxe, ip FROM machine_nics WHERE machine_id = $1 ORDER BY id")
                .bind(machines[0].id)
                .fetch_all(&self.pool)
                .await?
        } else {
            sqlx::query("SELECT machine_id, mac, name, pxe, ip FROM machine_nics ORDER BY id")
                .fetch_all(&self.pool)
                .await?
        };
        let mut by_machine: HashMap<i64, Vec<Nic>> = HashMap::new();
        for r in &rows {
            let mac: String = r.try_get("mac")?;
            let ip = match r.try_get::<Option<String>, _>("ip")? {
                Some(t) => Some(t.parse().map_err(|_| {
                    Error::invalid("ip", format!("stored address '{t}' is damaged"))
                })?),
                None => None,
            };
            by_machine
                .entry(r.try_get("machine_id")?)
                .or_default()
                .push(Nic {
                    mac: mac.parse()?,
                    name: r.try_get("name")?,
                    pxe: r.try_get::<i64, _>("pxe")? != 0,
                    ip,
                });
        }
        for m in machines {
            m.nics = by_machine.remove(&m.id).unwrap_or_default();
        }
        Ok(())
    }

    /// Lists machines matching `f`, by name.
    pub async fn machines(&self, f: &MachineFilter) -> Result<Vec<Machine>> {
        let sql = format!(
            "{} WHERE {FILTER_WHERE} ORDER BY m.name{}",
            *MACHINE_SELECT,
            f.limit_clause()?
        );
        let rows = bind_filter!(sqlx::query(&sql), f)
            .fetch_all(&self.pool)
            .await?;
        let mut out = rows
            .iter()
            .map(machine_from_row)
            .collect::<Result<Vec<_>>>()?;
        self.attach_nics(&mut out).await?;
        Ok(out)
    }

    /// The same list as [`Inventory::machines`], already serialised as a JSON array by the
    /// database. Decoding 10,000 rows one by one through the driver costs ~10x more than
    /// letting the engine build the document; `tests/inventory.rs` checks both agree.
    pub async fn machines_json(&self, f: &MachineFilter) -> Result<String> {
        self.machines_json_for(f, true).await
    }

    /// Like [`Inventory::machines_json`]; without `bmc_details` each BMC's address, user and
    /// last error are blank, as [`Machine::without_bmc_details`] leaves them (members' view).
    pub async fn machines_json_for(&self, f: &MachineFilter, bmc_details: bool) -> Result<String> {
        let rows = machine_docs_sql(self.backend, f, bmc_details, DocAs::Json)?;
        let sql = match self.backend {
            crate::Backend::Sqlite => {
                format!(
                    "SELECT '[' || COALESCE(group_concat(doc, ','), '') || ']' FROM ({rows}) AS q"
                )
            }
            crate::Backend::Postgres => format!(
                "SELECT COALESCE(json_agg(doc ORDER BY name), '[]'::json)::text FROM ({rows}) AS q"
            ),
        };
        let text: String = bind_filter!(sqlx::query_scalar(&sql), f)
            .fetch_one(&self.pool)
            .await?;
        Ok(text)
    }

    /// How many machines are in each state (for metrics).
    pub async fn machine_counts(&self) -> Result<Vec<(MachineState, i64)>> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM machines GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>("state")?.parse()?, r.try_get("n")?)))
            .collect()
    }

    /// One machine by name.
    pub async fn machine(&self, name: &str) -> Result<Machine> {
        let row = sqlx::query(&format!("{} WHERE m.name = $1", *MACHINE_SELECT))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::not_found("machine", name))?;
        let mut m = [machine_from_row(&row)?];
        self.attach_nics(&mut m).await?;
        let [m] = m;
        Ok(m)
    }

    /// The machine owning a MAC, if any.
    pub async fn machine_by_mac(&self, mac: MacAddress) -> Result<Option<Machine>> {
        let name: Option<String> = sqlx::query_scalar(
            "SELECT m.name FROM machine_nics n JOIN machines m ON m.id = n.machine_id WHERE n.mac = $1",
        )
        .bind(mac.to_string())
        .fetch_optional(&self.pool)
        .await?;
        match name {
            Some(n) => Ok(Some(self.machine(&n).await?)),
            None => Ok(None),
        }
    }

    /// What the boot server needs of every NIC: its machine's name and state, and the NIC's
    /// reserved address — three columns, not whole machines (DHCP reads this snapshot).
    pub async fn boot_identities(
        &self,
    ) -> Result<Vec<(MacAddress, String, MachineState, Option<std::net::Ipv4Addr>)>> {
        let rows = sqlx::query(
            "SELECT n.mac, m.name, m.state, n.ip FROM machine_nics n JOIN machines m ON m.id = n.machine_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mac: String = r.try_get("mac")?;
            let state: String = r.try_get("state")?;
            let ip: Option<String> = r.try_get("ip")?;
            out.push((
                mac.parse()?,
                r.try_get("name")?,
                state.parse()?,
                ip.and_then(|t| t.parse().ok()),
            ));
        }
        Ok(out)
    }
}
