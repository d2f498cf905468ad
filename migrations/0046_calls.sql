-- Calls read model (owner: the projector's `calls` projection), issue 29: every call a
-- tenant's numbers made or took, as SignalWire reported it, so a missed call is seen in a
-- list and not only in the audit. Rebuilt from `call` events at will.
CREATE TABLE calls (
    -- UUID v5 (OID namespace) of "call\0{CallSid}": the keyset paging id.
    id            uuid        PRIMARY KEY,
    -- The provider's CallSid (the `call` stream's id).
    call_sid      text        NOT NULL UNIQUE,
    tenant_id     text        NOT NULL,
    -- inbound | outbound; null until a status callback said (a recording came first).
    direction     text,
    from_number   text,
    to_number     text,
    -- The last status: queued, initiated, ringing, in-progress, completed, busy, failed,
    -- no-answer, canceled; null until a status callback came.
    status        text,
    -- An inbound call that ended unanswered (busy, no-answer, failed, canceled).
    missed        boolean     NOT NULL DEFAULT false,
    duration_secs integer,
    recording_sid text,
    recording_url text,
    -- When the platform first heard of it, and last.
    started_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    version       bigint      NOT NULL
);
CREATE INDEX calls_tenant ON calls (tenant_id, started_at DESC, id DESC);
CREATE INDEX calls_missed ON calls (tenant_id, started_at DESC, id DESC) WHERE missed;
