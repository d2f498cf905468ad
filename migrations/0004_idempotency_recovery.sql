-- Idempotency-Key claims remember the request that made them, so that when that request's
-- answer was lost (its process died, or it answered 5xx after committing) a retry first
-- looks in the event store for what that request appended instead of running it again.

ALTER TABLE idempotency_keys
    ADD COLUMN request_id text,
    -- Set when the first attempt ended without a storable answer (5xx, transient 409): the
    -- next attempt may take the claim over at once instead of after a minute.
    ADD COLUMN released   boolean NOT NULL DEFAULT false;

-- Finds the events one request appended (idempotency recovery, and telling a real
-- concurrency conflict from a committed write).
CREATE INDEX events_request_id ON events ((metadata->>'request_id'));
