-- Read models: rebuilt from the event store at will (projector rebuild), never a source of
-- truth. Every row carries tenant_id (invariant 6).

-- Per projection and aggregate, the last sequence applied; written in the same transaction
-- as the read-model change, which is what makes application exactly-once (invariant 4).
CREATE TABLE projection_checkpoints (
    projection     text   NOT NULL,
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL,
    PRIMARY KEY (projection, aggregate_type, aggregate_id)
);

-- Messages a projection could not apply after its retries; they no longer block others.
CREATE TABLE dead_letters (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection      text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL,
    tenant_id       text        NOT NULL,
    subject         text        NOT NULL,
    error           text        NOT NULL,
    deliveries      bigint      NOT NULL,
    payload         bytea       NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (projection, aggregate_type, aggregate_id, sequence)
);

-- The tenants read model.
CREATE TABLE tenants (
    id            uuid        PRIMARY KEY,
    tenant_id     text        NOT NULL,
    name          text        NOT NULL,
    slug          text        NOT NULL,
    contact_email text        NOT NULL,
    -- pending | active | rejected | suspended
    status        text        NOT NULL,
    preferences   jsonb       NOT NULL DEFAULT '{}',
    logo          jsonb,
    rejection_reason  text,
    suspension_reason text,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    -- The aggregate sequence this row reflects (read-your-writes compares against it).
    version       bigint      NOT NULL
);
CREATE INDEX tenants_page ON tenants (created_at DESC, id DESC);
CREATE INDEX tenants_status_page ON tenants (status, created_at DESC, id DESC);
CREATE INDEX tenants_tenant ON tenants (tenant_id);
