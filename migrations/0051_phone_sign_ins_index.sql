-- no-transaction
-- Owner: the event store (read by the projector's realtime eviction). A suspended tenant's
-- chatbot users are found in the store itself, from their verified sign-ins, so a user who
-- signed in a moment before the suspension is disconnected too, whatever the lag of any
-- read model; this index keeps that lookup to the tenant's `CodeVerified` events. Built
-- concurrently, so appends go on while it is made.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_phone_sign_ins ON events
    ((metadata->>'tenant_id'))
  WHERE aggregate_type = 'phone_login' AND event_type = 'CodeVerified';
