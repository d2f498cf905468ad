-- no-transaction
-- Owner: command-api (whatsapp). Meta's endpoint check (`GET /api/webhooks/whatsapp`) finds
-- a connected session by the hash of the verify token it names, in the sessions' own events
-- (the command side decides from its own state, never from a read model): this index keeps
-- that lookup to the few `Connected` events that carry the hash, however large the store.
-- Built concurrently, so appends go on while it is made.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_whatsapp_verify_tokens ON events
    ((payload->'Connected'->>'verify_token_sha256'))
  WHERE aggregate_type = 'whatsapp_session' AND event_type = 'Connected';
