-- State command-api keeps beside the event store. None of it is history: it can be lost
-- without losing a fact, at worst an idempotent replay answer or a slug reservation.

-- Idempotency-Key: the first answer to a POST, replayed to a retry with the same key.
CREATE TABLE idempotency_keys (
    -- Who sent the key (a user id, or `anonymous:{ip-independent}`) and the route: a key is
    -- only the same request for the same caller on the same route.
    scope         text        NOT NULL,
    key           text        NOT NULL,
    -- SHA-256 of method, path and body: the same key with another request is refused.
    request_hash  bytea       NOT NULL,
    -- NULL while the first request is still running.
    status        smallint,
    headers       jsonb,
    body          bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Slugs are unique across tenants; an aggregate sees only its own stream, so the tenant
-- aggregate asks this reservation table (through a service) before deciding.
CREATE TABLE tenant_slugs (
    slug        text        PRIMARY KEY,
    tenant_id   text        NOT NULL,
    reserved_at timestamptz NOT NULL DEFAULT now()
);
