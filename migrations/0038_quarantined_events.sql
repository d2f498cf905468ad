-- Owner: command-api (the relay). A committed event the relay cannot publish — its stored
-- form no longer decodes (nested past what JSON readers take), or it is larger than the bus
-- accepts — is set aside here instead of being retried forever, so that it never holds back
-- the events after it, of any tenant. The event itself stays in `events` untouched (they are
-- never changed); this row says it was not published, why, and when it was found. Every row
-- not yet acknowledged shows on command-api's `/health/ready`, each one is logged at error
-- and counted (`relay_events_quarantined_total`); an operator acknowledges a row once it is
-- dealt with
-- (docs/architecture.md, "Limits on what is stored").
CREATE TABLE quarantined_events (
    stream          text        NOT NULL,
    global_position bigint      NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL,
    event_type      text        NOT NULL,
    tenant_id       text        NOT NULL,
    -- `unreadable` or `too_large`.
    reason          text        NOT NULL,
    -- What the reader reported, for the operator.
    detail          text        NOT NULL,
    quarantined_at  timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz,
    PRIMARY KEY (stream, global_position)
);
