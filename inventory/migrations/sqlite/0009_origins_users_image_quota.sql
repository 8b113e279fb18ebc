-- Issue 14: where a request came from, users that can be switched off, image storage quotas.
-- Every audit event names the caller's source address and token prefix (never the secret);
-- NULL for events with no request behind them (the scheduler, the conductor).
ALTER TABLE audit_events ADD COLUMN source TEXT;
ALTER TABLE audit_events ADD COLUMN token_prefix TEXT;
-- A disabled user's tokens stop authenticating at once (NULL: active).
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
-- Image storage a group may use (NULL: unlimited).
ALTER TABLE member_groups ADD COLUMN quota_max_image_bytes BIGINT;
ALTER TABLE member_groups ADD COLUMN quota_max_images BIGINT;
