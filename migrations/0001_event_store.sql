-- The event store: the only source of truth (ARCHITECTURE.md invariant 1).
--
-- `events` and `snapshots` have exactly the columns postgres-es 0.5 reads and writes; every
-- extra column has a default, so postgres-es inserts run unchanged.

CREATE TABLE events (
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    -- 1-based position inside the aggregate's stream; the primary key makes two writers of
    -- the same sequence collide, which is optimistic concurrency (invariant 2).
    sequence        bigint      NOT NULL CHECK (sequence >= 1),
    event_type      text        NOT NULL,
    event_version   text        NOT NULL,
    payload         jsonb       NOT NULL,
    -- tenant_id, actor_id, actor_kind, correlation_id, causation_id, request_id.
    metadata        jsonb       NOT NULL,
    -- Position in the whole store. Allocated at insert, not at commit, so it alone is not
    -- commit order: a slower transaction can commit a lower position after a higher one.
    global_position bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- The writing transaction. With the snapshot horizon it gives commit order: the relay
    -- reads only rows whose transaction is older than every transaction still in flight.
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence),
    CONSTRAINT events_metadata_has_tenant CHECK (metadata ? 'tenant_id')
);

-- The relay's read: everything after its checkpoint, below the horizon, in commit order.
CREATE INDEX events_commit_order ON events (transaction_id, global_position);

-- Events are facts: never updated, never deleted.
CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();

-- Wakes relays in other processes when events commit (NOTIFY is delivered at commit, and
-- several notifications of one transaction fold into one).
CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('events_appended', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_appended
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- Aggregate snapshots for long streams. postgres-es updates them in place, so they are a
-- cache, not history, and carry no append-only trigger.
CREATE TABLE snapshots (
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint NOT NULL CHECK (current_snapshot >= 0),
    payload          jsonb  NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- Where the relay has published up to: the (transaction_id, global_position) pair of the
-- last event whose PubAck arrived. One row per stream the relay publishes to.
CREATE TABLE relay_checkpoints (
    stream          text        PRIMARY KEY,
    transaction_id  xid8        NOT NULL,
    global_position bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
