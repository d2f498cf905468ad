-- Phone sign-in for chatbot users. Phone numbers are personal data that must be erasable,
-- so they never enter events: the phone_login aggregate and the phone user are named by
-- keyed hashes, and the number itself lives here, where it can be deleted.

CREATE TABLE phone_users (
    user_id    text        PRIMARY KEY,
    tenant_id  text        NOT NULL,
    phone      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, phone)
);

-- Fixed-window counters for limits that span aggregates (codes requested per client IP).
CREATE TABLE rate_limits (
    bucket       text        NOT NULL,
    window_start timestamptz NOT NULL,
    hits         integer     NOT NULL,
    PRIMARY KEY (bucket, window_start)
);

-- Messages to send. With no provider configured they are captured here and shown by
-- query-api's dev inbox, never dropped. Bodies may hold one-time codes: this table, unlike
-- the event store, can be purged.
CREATE TABLE outbound_messages (
    id           uuid        PRIMARY KEY,
    tenant_id    text        NOT NULL,
    channel      text        NOT NULL,
    recipient    text        NOT NULL,
    body         text        NOT NULL,
    -- The event that caused it (`{aggregate_type}:{aggregate_id}:{sequence}`): a message is
    -- keyed by its cause, so a retry cannot send it twice.
    causation_id text        NOT NULL UNIQUE,
    -- captured | queued | sent | failed
    status       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbound_messages_recipient ON outbound_messages (recipient, created_at DESC);
