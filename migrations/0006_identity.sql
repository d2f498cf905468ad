-- Identity secrets and look-ups, beside the event store. Secrets never enter events: the
-- admin_user stream says "PasswordChanged" or "LoginSucceeded", these tables hold the hash
-- and the refresh tokens.

-- One argon2id hash (PHC string, salt included) per admin user.
CREATE TABLE admin_credentials (
    user_id       text        PRIMARY KEY,
    password_hash text        NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Login e-mails are unique across admin users (lower-cased); a login finds its user here.
-- The tenant is kept beside it because every event needs its tenant scope, and an admin
-- user never changes tenant.
CREATE TABLE admin_emails (
    email       text        PRIMARY KEY,
    user_id     text        NOT NULL UNIQUE,
    tenant_id   text,
    reserved_at timestamptz NOT NULL DEFAULT now()
);

-- Refresh tokens, stored as SHA-256 of the token. A session is a family of tokens: each
-- refresh spends one and issues the next; presenting a spent one revokes the family.
CREATE TABLE admin_sessions (
    token_hash bytea       PRIMARY KEY,
    session_id text        NOT NULL,
    user_id    text        NOT NULL,
    -- active | spent | revoked
    status     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX admin_sessions_family ON admin_sessions (session_id);
