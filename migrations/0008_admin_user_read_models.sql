-- Read models of the identity context, built by the projector from admin_user events.

-- One row per admin user. tenant_id is the event metadata's tenant (`platform` for a super
-- admin without one), which is what scopes every read.
CREATE TABLE admin_users (
    id            text        PRIMARY KEY,
    tenant_id     text        NOT NULL,
    email         text        NOT NULL,
    role          text        NOT NULL,
    department    text,
    active        boolean     NOT NULL,
    last_login_at timestamptz,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    version       bigint      NOT NULL
);
CREATE INDEX admin_users_tenant_page ON admin_users (tenant_id, created_at DESC, id DESC);

-- Login history for audits: every attempt on a known account, every lock and session end.
CREATE TABLE admin_logins (
    user_id    text        NOT NULL,
    sequence   bigint      NOT NULL,
    tenant_id  text        NOT NULL,
    -- succeeded | wrong_password | locked | inactive | locked_out | logout | refresh_reuse
    outcome    text        NOT NULL,
    session_id text,
    at         timestamptz NOT NULL,
    PRIMARY KEY (user_id, sequence)
);
CREATE INDEX admin_logins_tenant ON admin_logins (tenant_id, at DESC);
