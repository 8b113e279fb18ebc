-- Leasing (issue 6). Cooperative-wide settings, and what a pending lease needs to start later.

-- Cooperative-wide settings as key/value text (e.g. max_lease_hours); absent key: default.
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- 1: the lease waits for capacity (waitlist); 0: it starts at starts_at (reservation) or is
-- active. duration_ms: how long a waiting lease runs once it gets its machines.
ALTER TABLE leases ADD COLUMN waiting BIGINT NOT NULL DEFAULT 0;
ALTER TABLE leases ADD COLUMN duration_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX leases_pending ON leases(state, starts_at);
CREATE INDEX lease_machines_machine ON lease_machines(machine_id, released_at);
CREATE INDEX wipe_certificates_lease ON wipe_certificates(lease_id);
