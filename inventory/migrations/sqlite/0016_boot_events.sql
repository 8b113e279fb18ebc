-- Issue 15: what the boot server saw of each MAC (DHCP messages with the arch and vendor
-- class, TFTP files, /boot fetches, the agent's claim), so a machine's timeline shows why it
-- is stuck. Keyed by MAC, not machine: unknown MACs have events too. Bounded per MAC by the
-- writer (the newest few hundred are kept).
CREATE TABLE boot_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mac TEXT NOT NULL,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX boot_events_mac ON boot_events (mac, id);
