-- Issue 15: people sign in to the web dashboard. A user may have an argon2id password hash
-- (PHC string); staff can require a new one at next sign-in. A browser session is stored
-- only as the SHA-256 of its cookie value, with its CSRF token, idle and absolute expiry.
ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN password_change_required BIGINT NOT NULL DEFAULT 0;

CREATE TABLE web_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    hash TEXT NOT NULL UNIQUE,
    csrf_token TEXT NOT NULL,
    -- how the person signed in: 'password', or 'token' (a pasted API token, named by prefix)
    method TEXT NOT NULL CHECK (method IN ('password', 'token')),
    token_prefix TEXT,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX web_sessions_user ON web_sessions (user_id);
