-- Signed wipe certificates: the signature over the canonical body (NULL for certificates
-- stored before signing existed), and every public key that ever signed one, so an export
-- carries them and an importing instance still verifies old certificates.
ALTER TABLE wipe_certificates ADD COLUMN signature TEXT;

CREATE TABLE trust_keys (
    key_id TEXT PRIMARY KEY,
    algorithm TEXT NOT NULL,
    public_key TEXT NOT NULL,
    first_seen_at BIGINT NOT NULL
);
