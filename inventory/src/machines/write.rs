//! Enrolling, editing, deleting machines and moving them through the lifecycle.

use super::checks::*;
use super::*;
use crate::audit::record_in;
use crate::db::to_json;
use crate::error::conflict_if_unique;
use crate::sites::{check_name, check_text, MAX_NOTES_BYTES};
use crate::transition::{transition_tx, MachineRef, TransitionAudit};
use crate::{now_ms, Error, Inventory, Machine, MachineState, NewAuditEvent, Nic, Result};
use sqlx::{Any, Transaction};

impl Inventory {
    pub(super) async fn locate(
        &self,
        site: Option<&str>,
        rack: Option<&str>,
    ) -> Result<(Option<i64>, Option<i64>)> {
        match (
            site.filter(|s| !s.is_empty()),
            rack.filter(|r| !r.is_empty()),
        ) {
            (None, None) => Ok((None, None)),
            (None, Some(_)) => Err(Error::invalid("rack", "a rack needs its site (--site)")),
            (Some(s), None) => Ok((Some(self.site_id(s).await?), None)),
            (Some(s), Some(r)) => {
                let sid = self.site_id(s).await?;
                Ok((Some(sid), Some(self.rack_id(sid, s, r).await?)))
            }
        }
    }

    pub(crate) async fn insert_nics(
        &self,
        tx: &mut Transaction<'_, Any>,
        machine_id: i64,
        machine: &str,
        nics: &[Nic],
    ) -> Result<()> {
        for n in nics {
            let mac = n.mac.to_string();
            let owner: Option<String> = sqlx::query_scalar(
                "SELECT m.name FROM machine_nics n JOIN machines m ON m.id = n.machine_id WHERE n.mac = $1 AND n.machine_id <> $2",
            )
            .bind(&mac)
            .bind(machine_id)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(owner) = owner {
                return Err(Error::conflict(
                    "mac",
                    format!("{mac} already belongs to machine '{owner}'"),
                ));
            }
            if let Some(ip) = n.ip {
                let holder: Option<String> = sqlx::query_scalar(
                    "SELECT m.name FROM machine_nics n JOIN machines m ON m.id = n.machine_id \
                     WHERE n.ip = $1 AND n.machine_id <> $2",
                )
                .bind(ip.to_string())
                .bind(machine_id)
                .fetch_optional(&mut **tx)
                .await?;
                if let Some(holder) = holder {
                    return Err(Error::conflict(
                        "ip",
                        format!("{ip} is already reserved for machine '{holder}'"),
                    ));
                }
            }
            sqlx::query(
                "INSERT INTO machine_nics (machine_id, mac, name, pxe, ip) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(machine_id)
            .bind(&mac)
            .bind(&n.name)
            .bind(i64::from(n.pxe))
            .bind(n.ip.map(|i| i.to_string()))
            .execute(&mut **tx)
            .await
            .map_err(conflict_if_unique("mac", || format!(
                        "{mac} is already enrolled (machine '{machine}' raced another request)"
                    )))?;
        }
        Ok(())
    }

    /// Enrols a machine in state `new`.
    pub async fn add_machine(&self, actor: &str, m: &NewMachine) -> Result<Machine> {
        self.add_machine_in_state(actor, m, MachineState::New, "enrolled", "machine.create")
            .await
    }

    /// Enrols a machine in a given state (import and discovery use this).
    pub async fn add_machine_in_state(
        &self,
        actor: &str,
        m: &NewMachine,
        state: MachineState,
        reason: &str,
        action: &str,
    ) -> Result<Machine> {
        check_name("name", &m.name)?;
        check_tags(&m.tags)?;
        let arch = m.arch.clone().unwrap_or_else(|| "x86_64".into());
        check_arch(&arch)?;
        check_non_negative("cpu_count", m.cpu_count)?;
        check_non_negative("ram_mib", m.ram_mib)?;
        check_text("notes", m.notes.as_deref().unwrap_or(""), MAX_NOTES_BYTES)?;
        let nics = normalise_nics(m.nics.clone(), &m.macs)?;
        let (site_id, rack_id) = self.locate(m.site.as_deref(), m.rack.as_deref()).await?;
        if let Some(b) = &m.bmc {
            b.protocol()?;
        }
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO machines (name, serial, vendor, model, arch, cpu_count, cpu_model, ram_mib, disks, tags, \
             site_id, rack_id, rack_unit, notes, state, state_reason, state_changed_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17, $17) RETURNING id",
        )
        .bind(&m.name)
        .bind(&m.serial)
        .bind(&m.vendor)
        .bind(&m.model)
        .bind(&arch)
        .bind(m.cpu_count)
        .bind(&m.cpu_model)
        .bind(m.ram_mib)
        .bind(to_json(&m.disks))
        .bind(to_json(&m.tags))
        .bind(site_id)
        .bind(rack_id)
        .bind(&m.rack_unit)
        .bind(m.notes.clone().unwrap_or_default())
        .bind(state.as_str())
        .bind(reason)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(conflict_if_unique("name", || format!("machine '{}' already exists", m.name)))?;
        self.insert_nics(&mut tx, id, &m.name, &nics).await?;
        if let Some(b) = &m.bmc {
            self.upsert_bmc(&mut tx, id, b).await?;
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, action, "machine", &m.name).detail(serde_json::json!({
                "macs": nics.iter().map(|n| n.mac.to_string()).collect::<Vec<_>>(),
                "state": state,
                "bmc": m.bmc.as_ref().map(|b| b.url.clone()),
                "tls_insecure": m.bmc.as_ref().is_some_and(|b| b.tls_insecure),
            })),
        )
        .await?;
        crate::retry::commit(tx).await?;
        self.machine(&m.name).await
    }

    /// Applies a patch. A forbidden or colliding change leaves the machine untouched.
    pub async fn update_machine(
        &self,
        actor: &str,
        name: &str,
        p: &MachinePatch,
    ) -> Result<Machine> {
        let cur = self.machine(name).await?;
        let mut tags = p.tags.clone().unwrap_or_else(|| cur.tags.clone());
        for t in &p.add_tags {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        tags.retain(|t| !p.remove_tags.contains(t));
        check_tags(&tags)?;
        let arch = p.arch.clone().unwrap_or_else(|| cur.arch.clone());
        check_arch(&arch)?;
        check_non_negative("cpu_count", p.cpu_count)?;
        check_non_negative("ram_mib", p.ram_mib)?;
        check_text("notes", p.notes.as_deref().unwrap_or(""), MAX_NOTES_BYTES)?;
        let site = p.site.clone().or_else(|| cur.site.clone());
        let rack = match (&p.site, &p.rack) {
            (_, Some(r)) => Some(r.clone()),
            (Some(s), None) if s.is_empty() => None,
            _ => cur.rack.clone(),
        };
        let (site_id, rack_id) = self.locate(site.as_deref(), rack.as_deref()).await?;
        let nics = match &p.nics {
            Some(n) => Some(normalise_nics(n.clone(), &[])?),
            None => None,
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE machines SET serial = $1, vendor = $2, model = $3, arch = $4, cpu_count = $5, cpu_model = $6, \
             ram_mib = $7, disks = $8, tags = $9, site_id = $10, rack_id = $11, rack_unit = $12, notes = $13, updated_at = $14 \
             WHERE id = $15",
        )
        .bind(p.serial.clone().or(cur.serial))
        .bind(p.vendor.clone().or(cur.vendor))
        .bind(p.model.clone().or(cur.model))
        .bind(&arch)
        .bind(p.cpu_count.or(cur.cpu_count))
        .bind(p.cpu_model.clone().or(cur.cpu_model))
        .bind(p.ram_mib.or(cur.ram_mib))
        .bind(to_json(p.disks.as_ref().unwrap_or(&cur.disks)))
        .bind(to_json(&tags))
        .bind(site_id)
        .bind(rack_id)
        .bind(p.rack_unit.clone().or(cur.rack_unit))
        .bind(p.notes.clone().unwrap_or(cur.notes))
        .bind(now_ms())
        .bind(cur.id)
        .execute(&mut *tx)
        .await?;
        if let Some(nics) = &nics {
            sqlx::query("DELETE FROM machine_nics WHERE machine_id = $1")
                .bind(cur.id)
                .execute(&mut *tx)
                .await?;
            self.insert_nics(&mut tx, cur.id, name, nics).await?;
        }
        if p.remove_bmc {
            sqlx::query("DELETE FROM bmcs WHERE machine_id = $1")
                .bind(cur.id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(b) = &p.bmc {
            self.upsert_bmc(&mut tx, cur.id, b).await?;
        }
        let mut changed: Vec<&str> = Vec::new();
        macro_rules! note {
            ($($f:ident),*) => { $( if p.$f.is_some() { changed.push(stringify!($f)); } )* };
        }
        note!(
            serial, vendor, model, arch, cpu_count, cpu_model, ram_mib, disks, tags, nics, site,
            rack, rack_unit, notes, bmc
        );
        if !p.add_tags.is_empty() || !p.remove_tags.is_empty() {
            changed.push("tags");
        }
        if p.remove_bmc {
            changed.push("bmc");
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "machine.update", "machine", name)
                .group(cur.member_group.clone())
                .detail(serde_json::json!({
                    "fields": changed,
                    "tls_insecure": p.bmc.as_ref().map(|b| b.tls_insecure),
                })),
        )
        .await?;
        crate::retry::commit(tx).await?;
        self.machine(name).await
    }

    /// Deletes a machine that is not in use. Its audit history stays.
    pub async fn delete_machine(&self, actor: &str, name: &str) -> Result<()> {
        let cur = self.machine(name).await?;
        if !cur.state.deletable() || cur.lease_id.is_some() {
            return Err(Error::conflict(
                "state",
                format!(
                    "machine '{name}' is {} and cannot be deleted; move it to maintenance or retired first",
                    cur.state
                ),
            ));
        }
        let mut tx = self.begin_write().await?;
        let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE machine_id = $1")
            .bind(cur.id)
            .fetch_one(&mut *tx)
            .await?;
        if jobs > 0 {
            return Err(Error::conflict(
                "machine",
                format!("machine '{name}' has job history; retire it instead of deleting it"),
            ));
        }
        for sql in [
            "DELETE FROM machine_nics WHERE machine_id = $1",
            "DELETE FROM bmcs WHERE machine_id = $1",
            "DELETE FROM energy_samples WHERE machine_id = $1",
            "DELETE FROM lease_machines WHERE machine_id = $1",
            "DELETE FROM console_recordings WHERE machine_id = $1",
            "DELETE FROM machines WHERE id = $1",
        ] {
            sqlx::query(sql).bind(cur.id).execute(&mut *tx).await?;
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "machine.delete", "machine", name),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// Moves a machine to `to`, if the lifecycle allows it from its current state (or from
    /// `expected`, when given). A compare-and-set in one transaction: of many concurrent
    /// callers at most one wins; the others get [`Error::StateChanged`].
    pub async fn transition(
        &self,
        actor: &str,
        name: &str,
        to: MachineState,
        reason: &str,
        expected: Option<MachineState>,
    ) -> Result<Machine> {
        let cur = self.machine(name).await?;
        let from = expected.unwrap_or(cur.state);
        let machine = MachineRef {
            id: cur.id,
            name,
            group: cur.member_group.as_deref(),
        };
        let mut tx = self.begin_write().await?;
        transition_tx(
            &mut tx,
            actor,
            &machine,
            from,
            to,
            reason,
            TransitionAudit::Transition(None),
        )
        .await?;
        crate::retry::commit(tx).await?;
        self.machine(name).await
    }
}
