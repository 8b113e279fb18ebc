-- backend-specific: SQLite cannot drop a UNIQUE constraint, so it rebuilds the images table.
-- Issue 14: an image's (name, version) is unique within its owner's scope (public, or one
-- group), so a member's private image never collides with, nor reveals, another scope's.
-- SQLite cannot drop a table's UNIQUE constraint, so the table is rebuilt. Migrations run in
-- a transaction with foreign keys on, so jobs' image references are set aside while the old
-- table is dropped (dropping a referenced row would violate them) and restored after.
CREATE TABLE images_0008 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version TEXT NOT NULL DEFAULT '',
    arch TEXT NOT NULL DEFAULT 'x86_64',
    format TEXT NOT NULL CHECK (format IN ('raw', 'qcow2', 'raw.zst')),
    size_bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    -- NULL: public image
    owner_group_id BIGINT REFERENCES member_groups(id),
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
INSERT INTO images_0008 (id, name, version, arch, format, size_bytes, sha256, owner_group_id, created_by, created_at)
    SELECT id, name, version, arch, format, size_bytes, sha256, owner_group_id, created_by, created_at
    FROM images;
CREATE TEMP TABLE job_images_0008 AS SELECT id, image_id FROM jobs WHERE image_id IS NOT NULL;
UPDATE jobs SET image_id = NULL WHERE image_id IS NOT NULL;
DROP TABLE images;
ALTER TABLE images_0008 RENAME TO images;
UPDATE jobs SET image_id = (SELECT t.image_id FROM job_images_0008 t WHERE t.id = jobs.id)
    WHERE id IN (SELECT id FROM job_images_0008);
DROP TABLE job_images_0008;
CREATE UNIQUE INDEX images_scoped_name ON images (COALESCE(owner_group_id, 0), name, version);
