-- no-transaction
-- Finds the events one request appended: idempotency recovery, and telling a real
-- concurrency conflict from a committed write. Built CONCURRENTLY (outside a transaction),
-- so it does not block appends, nor hold back the relay's horizon for a whole build.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_request_id ON events ((metadata->>'request_id'));
