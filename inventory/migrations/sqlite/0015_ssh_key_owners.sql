-- Issue 16, consoles over SSH. A login by SSH key must name exactly one identity, so every
-- key (by its SHA256 fingerprint) belongs to ONE user or ONE group: the unique index is the
-- rule. Users' keys live here (public_key); groups' keys stay in member_groups.ssh_keys (the
-- reimage reads them there) and are mirrored here by fingerprint. Existing group keys are
-- filled in by Inventory::open (a fingerprint is a SHA-256 of the decoded key, not SQL).
CREATE TABLE ssh_key_owners (
    fingerprint TEXT NOT NULL,
    owner_kind TEXT NOT NULL CHECK (owner_kind IN ('user', 'group')),
    owner_id BIGINT NOT NULL,
    public_key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX ssh_key_owners_fingerprint ON ssh_key_owners (fingerprint);
CREATE INDEX ssh_key_owners_owner ON ssh_key_owners (owner_kind, owner_id);
