-- A group's webhook, called before its leases end (24 h and 1 h ahead).
ALTER TABLE member_groups ADD COLUMN webhook_url TEXT;

-- Each notice of a lease, once: sent, or given up after its attempts.
CREATE TABLE lease_notices (
    lease_id BIGINT NOT NULL REFERENCES leases(id),
    -- 'day' (24 h ahead) or 'hour' (1 h ahead)
    kind TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    -- set when delivered, or when the attempts ran out (then last_error says why)
    done_at BIGINT,
    PRIMARY KEY (lease_id, kind)
);
