-- Which instance holds which image blob (decision 52): every instance has its own image
-- store, so a blob uploaded at one site is fetched once by another site's instance from one
-- that holds it. A row per (blob, instance): 'held' (in its store), 'wanted' (a prefetch asked
-- for it), 'fetching' (bytes of size_bytes so far, from source) or 'failed' (error says why).
CREATE TABLE image_copies (
    sha256 TEXT NOT NULL,
    instance_id TEXT NOT NULL REFERENCES instances(id),
    state TEXT NOT NULL,
    bytes BIGINT NOT NULL DEFAULT 0,
    size_bytes BIGINT NOT NULL,
    source TEXT,
    error TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (sha256, instance_id)
);
CREATE INDEX image_copies_instance ON image_copies(instance_id, state);
