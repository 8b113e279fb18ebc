-- Several instances serving DHCP on one segment share dhcp_leases (decision 58). Each row
-- records when it was written (unix ms, taken under the lease writers' lock), so an instance
-- can read the rows the others wrote since its last look and stop offering their addresses.
-- Rows from before this migration count as written at 0: a fresh start loads them all anyway.
ALTER TABLE dhcp_leases ADD COLUMN written_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX dhcp_leases_written_at ON dhcp_leases (written_at);
