-- The job engine: what the conductor and the deploy agent need on top of the initial tables.
-- user data for cloud-init on a reimage
ALTER TABLE jobs ADD COLUMN user_data TEXT;
-- the agent's current phase (writing, verifying, ...) for progress displays
ALTER TABLE jobs ADD COLUMN phase TEXT NOT NULL DEFAULT '';
-- a cancel asked for while the job runs; the conductor acts on it
ALTER TABLE jobs ADD COLUMN cancel_requested_by TEXT;
-- set while the job waits for (or works with) its agent: only then does the boot script mint a token
ALTER TABLE jobs ADD COLUMN agent_armed_at BIGINT;
ALTER TABLE jobs ADD COLUMN agent_token_expires_at BIGINT;
ALTER TABLE jobs ADD COLUMN agent_claimed_at BIGINT;
-- hex SHA-256 of the session token the agent got when it claimed the job
ALTER TABLE jobs ADD COLUMN agent_session_hash TEXT;
ALTER TABLE jobs ADD COLUMN last_agent_at BIGINT;
-- at most one queued or running job per machine
CREATE UNIQUE INDEX jobs_one_active ON jobs(machine_id) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_agent_token ON jobs(agent_token_hash);
CREATE INDEX jobs_agent_session ON jobs(agent_session_hash);
