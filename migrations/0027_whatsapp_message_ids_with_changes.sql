-- no-transaction
-- A reply's edits and late changes (`MessageRevised`, `ChangeNotDelivered`) belong to its
-- events too: a conversation that reads an older message back from its events (migration
-- 0019) must see them. The index is rebuilt with them, CONCURRENTLY (outside a
-- transaction), so it blocks no append while it builds; migration 0028 drops the old one
-- (a statement of its own: CONCURRENTLY takes one statement per migration).
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_whatsapp_message_ids_2 ON events
    (aggregate_id,
     (coalesce(payload->'MessageReceived'->>'message_id',
               payload->'MessageQueued'->>'message_id',
               payload->'SendAttempted'->>'message_id',
               payload->'SendAttemptFailed'->>'message_id',
               payload->'MessageSent'->>'message_id',
               payload->'MessageFailed'->>'message_id',
               payload->'StatusUpdated'->>'message_id',
               payload->'MediaStored'->>'message_id',
               payload->'MediaFailed'->>'message_id',
               payload->'MessageRevised'->>'message_id',
               payload->'ChangeNotDelivered'->>'message_id')))
  WHERE aggregate_type = 'whatsapp_conversation';
