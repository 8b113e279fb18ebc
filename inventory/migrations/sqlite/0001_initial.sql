-- rackshare inventory schema, version 1.
-- Written once for SQLite; the PostgreSQL file is the same text with the identity column
-- spelled for PostgreSQL (see inventory/migrations/README.md). Times are unix milliseconds
-- (BIGINT); lists and records that are never queried by field are JSON text.

CREATE TABLE sites (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);

CREATE TABLE racks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id BIGINT NOT NULL REFERENCES sites(id),
    name TEXT NOT NULL,
    position TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    UNIQUE (site_id, name)
);

CREATE TABLE member_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    -- quotas; NULL means unlimited
    quota_max_machines BIGINT,
    quota_machine_hours_month BIGINT,
    ssh_keys TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('admin', 'staff', 'technician', 'member')),
    group_id BIGINT REFERENCES member_groups(id),
    created_at BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    -- public part of the token, used to find and revoke it
    prefix TEXT NOT NULL UNIQUE,
    -- hex SHA-256 of the whole token; the token itself is never stored
    hash TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    last_used_at BIGINT
);

CREATE TABLE machines (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    serial TEXT,
    vendor TEXT,
    model TEXT,
    arch TEXT NOT NULL DEFAULT 'x86_64',
    cpu_count BIGINT,
    cpu_model TEXT,
    ram_mib BIGINT,
    disks TEXT NOT NULL DEFAULT '[]',
    tags TEXT NOT NULL DEFAULT '[]',
    site_id BIGINT REFERENCES sites(id),
    rack_id BIGINT REFERENCES racks(id),
    rack_unit TEXT,
    notes TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL DEFAULT '',
    state_changed_at BIGINT NOT NULL,
    -- the lease holding the machine, if any (leases are defined below)
    lease_id BIGINT,
    energy_wh DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX machines_state ON machines(state);
CREATE INDEX machines_lease ON machines(lease_id);

CREATE TABLE machine_nics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id BIGINT NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    mac TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL DEFAULT '',
    -- 1 for the NIC the machine PXE-boots from
    pxe BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX machine_nics_machine ON machine_nics(machine_id);

CREATE TABLE bmcs (
    machine_id BIGINT PRIMARY KEY REFERENCES machines(id) ON DELETE CASCADE,
    protocol TEXT NOT NULL CHECK (protocol IN ('redfish', 'ipmi')),
    url TEXT NOT NULL,
    username TEXT NOT NULL DEFAULT '',
    -- base64(nonce || ChaCha20-Poly1305 ciphertext); never leaves the server in clear
    password_enc TEXT,
    tls_ca_pem TEXT,
    tls_fingerprint TEXT,
    tls_insecure BIGINT NOT NULL DEFAULT 0,
    last_success_at BIGINT,
    last_failure_at BIGINT,
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    power_state TEXT
);

CREATE TABLE energy_samples (
    machine_id BIGINT NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    watts DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (machine_id, at)
);

CREATE TABLE leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id BIGINT NOT NULL REFERENCES member_groups(id),
    -- pending (future start or waiting for capacity), active, ended
    state TEXT NOT NULL,
    machine_count BIGINT NOT NULL,
    constraints TEXT NOT NULL DEFAULT '{}',
    starts_at BIGINT NOT NULL,
    ends_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    ended_at BIGINT,
    end_reason TEXT,
    energy_wh DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE INDEX leases_group ON leases(group_id);
CREATE INDEX leases_state ON leases(state, ends_at);

CREATE TABLE lease_machines (
    lease_id BIGINT NOT NULL REFERENCES leases(id),
    machine_id BIGINT NOT NULL REFERENCES machines(id),
    allocated_at BIGINT NOT NULL,
    released_at BIGINT,
    PRIMARY KEY (lease_id, machine_id)
);

CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version TEXT NOT NULL DEFAULT '',
    arch TEXT NOT NULL DEFAULT 'x86_64',
    format TEXT NOT NULL CHECK (format IN ('raw', 'qcow2', 'raw.zst')),
    size_bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    -- NULL: public image
    owner_group_id BIGINT REFERENCES member_groups(id),
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (name, version)
);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('reimage', 'inspect', 'wipe')),
    machine_id BIGINT NOT NULL REFERENCES machines(id),
    image_id BIGINT REFERENCES images(id),
    lease_id BIGINT REFERENCES leases(id),
    -- queued, running, succeeded, failed, cancelled
    state TEXT NOT NULL,
    current_step BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    requested_by TEXT NOT NULL,
    -- hex SHA-256 of the one-time token the agent presents
    agent_token_hash TEXT,
    progress_bytes BIGINT NOT NULL DEFAULT 0,
    progress_total BIGINT NOT NULL DEFAULT 0,
    result TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX jobs_state ON jobs(state);
CREATE INDEX jobs_machine ON jobs(machine_id);

CREATE TABLE job_steps (
    job_id BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    name TEXT NOT NULL,
    -- pending, running, succeeded, failed, skipped
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    timeout_secs BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    error TEXT,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE job_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX job_events_job ON job_events(job_id);

CREATE TABLE wipe_certificates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    machine_id BIGINT NOT NULL REFERENCES machines(id),
    lease_id BIGINT REFERENCES leases(id),
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE dhcp_leases (
    mac TEXT PRIMARY KEY,
    ip TEXT NOT NULL UNIQUE,
    hostname TEXT,
    client_id TEXT,
    state TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target TEXT NOT NULL,
    -- names, not ids, so the log outlives what it talks about
    machine TEXT,
    member_group TEXT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_machine ON audit_events(machine, id);
CREATE INDEX audit_events_group ON audit_events(member_group, id);
