-- Owner: command-api (chat). A thread keeps only its latest messages in its state
-- (chat::aggregate::RECENT_MESSAGES); an older message a command names (an edit, a deletion,
-- a retry that comes late) is read from the thread's own events through this index, so the
-- look-up costs the same in the 10,000th message as in the 300th.
--
-- Partial: only chat messages' events carry a message id, and only they are looked up. It
-- adds one small index entry to each message's append.
CREATE INDEX events_thread_message_ids ON events
    (aggregate_id,
     (coalesce(payload->'MessageSent'->>'message_id', payload->'MessageDeleted'->>'message_id')))
  WHERE aggregate_type = 'thread' AND event_type IN ('MessageSent', 'MessageDeleted');
