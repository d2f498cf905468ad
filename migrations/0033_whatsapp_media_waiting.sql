-- no-transaction
-- Owner: projector (`whatsapp-media-refetch` worker). Inbound files refused for the
-- session's access token (`MediaFailed` with `retryable`), found in the conversations' own
-- events when the session is connected again: the `whatsapp_messages` read model may not
-- show the failure yet (it lags, or is being rebuilt) when `Connected` is handled.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_whatsapp_media_retryable ON events
    (aggregate_id)
  WHERE aggregate_type = 'whatsapp_conversation' AND event_type = 'MediaFailed'
    AND (payload->'MediaFailed'->>'retryable')::boolean;
