-- Issue 18, running a cooperative. The BMC's cumulative energy counter read with each power
-- sample (NULL when the BMC keeps none), so reports prefer it to integrating watts; and the
-- idle power-off record: when rackshare last powered an idle machine off (or tried to), and
-- the BMC's error when it could not, so a failing BMC is reported once, not retried forever.
ALTER TABLE energy_samples ADD COLUMN energy_kwh DOUBLE PRECISION;
ALTER TABLE machines ADD COLUMN idle_off_at BIGINT;
ALTER TABLE machines ADD COLUMN idle_off_error TEXT;
