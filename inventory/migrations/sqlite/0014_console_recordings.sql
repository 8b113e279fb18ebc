-- Issue 16: each lease's console recording, in chunks as the broker wrote them. Bounded per
-- lease by the writer: end_offset is the lease's running byte count after the chunk, and
-- chunks that start before (newest end_offset - bound) are pruned in the same transaction.
-- Deleted per machine when the machine's wipe succeeds (the wipe certificate says how much).
CREATE TABLE console_recordings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lease_id BIGINT NOT NULL REFERENCES leases(id),
    machine_id BIGINT NOT NULL,
    at BIGINT NOT NULL,
    end_offset BIGINT NOT NULL,
    size BIGINT NOT NULL,
    bytes BLOB NOT NULL
);
CREATE INDEX console_recordings_lease ON console_recordings (lease_id, id);
CREATE INDEX console_recordings_machine ON console_recordings (machine_id, lease_id);
