-- Issue 16: each job's console tail, what the broker saw of the machine's serial port while
-- the job ran (a headless session holds the console open for the job). Bounded per job by the
-- writer like console_recordings (end_offset is the job's running byte count; chunks starting
-- before newest end_offset - bound are pruned in the same transaction). Deleted with the
-- machine's lease recordings when its wipe succeeds.
CREATE TABLE job_console (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    machine_id BIGINT NOT NULL,
    at BIGINT NOT NULL,
    end_offset BIGINT NOT NULL,
    size BIGINT NOT NULL,
    bytes BLOB NOT NULL
);
CREATE INDEX job_console_job ON job_console (job_id, id);
CREATE INDEX job_console_machine ON job_console (machine_id, id);
