-- Several `serve` processes on one database (decision S1): each instance's row with its
-- heartbeat, the job each instance holds (a claim that expires unless renewed) and the
-- leader rows of work that must run once (the lease scheduler) or once per site.
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    site_id BIGINT REFERENCES sites(id),
    version TEXT NOT NULL,
    api_url TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
-- the instance driving the job, and until when its claim holds without a renewal
ALTER TABLE jobs ADD COLUMN holder TEXT;
ALTER TABLE jobs ADD COLUMN held_until BIGINT;
CREATE INDEX jobs_holder ON jobs(holder);
CREATE TABLE leaders (
    role TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    held_until BIGINT NOT NULL
);
-- what every instance must sign and speak with alike (the wipe-certificate signing key, the
-- self-signed TLS identity), sealed under the shared secret key: the first instance writes,
-- the others read
CREATE TABLE shared_secrets (
    name TEXT PRIMARY KEY,
    sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
