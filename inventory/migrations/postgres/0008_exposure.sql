-- backend-specific: SQLite cannot drop a UNIQUE constraint, so it rebuilds the images table.
-- Issue 14: an image's (name, version) is unique within its owner's scope (public, or one
-- group), so a member's private image never collides with, nor reveals, another scope's.
ALTER TABLE images DROP CONSTRAINT images_name_version_key;
CREATE UNIQUE INDEX images_scoped_name ON images (COALESCE(owner_group_id, 0), name, version);
