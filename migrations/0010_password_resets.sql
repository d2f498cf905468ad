-- Admin-initiated password resets: one-time tokens, stored as SHA-256, valid one hour.
CREATE TABLE admin_password_resets (
    token_hash bytea       PRIMARY KEY,
    user_id    text        NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_password_resets_user ON admin_password_resets (user_id);
