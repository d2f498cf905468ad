-- Owner: command-api (WhatsApp). A conversation keeps only its latest messages in its state
-- (whatsapp::aggregate::RECENT_MESSAGES); an older message a command names (a late status,
-- a redelivered webhook, a retried queue command) is read from the conversation's own
-- events through these indexes (whatsapp::history).
--
-- Every event of a conversation but `Started` names its message under its variant's key.
CREATE INDEX events_whatsapp_message_ids ON events
    (aggregate_id,
     (coalesce(payload->'MessageReceived'->>'message_id',
               payload->'MessageQueued'->>'message_id',
               payload->'SendAttempted'->>'message_id',
               payload->'SendAttemptFailed'->>'message_id',
               payload->'MessageSent'->>'message_id',
               payload->'MessageFailed'->>'message_id',
               payload->'StatusUpdated'->>'message_id',
               payload->'MediaStored'->>'message_id',
               payload->'MediaFailed'->>'message_id')))
  WHERE aggregate_type = 'whatsapp_conversation';

-- A status the provider reports by its own id only.
CREATE INDEX events_whatsapp_sent_wamids ON events
    (aggregate_id, (payload->'MessageSent'->>'wamid'))
  WHERE aggregate_type = 'whatsapp_conversation' AND event_type = 'MessageSent';
