-- no-transaction
-- Owner: projector (`payment-references` worker). Webhooks recorded as naming a provider
-- reference no payment was paid with yet (`Processed.unmatched_reference`): when a payment
-- is paid with that reference, they are replayed.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_webhook_unmatched_references ON events
    ((payload->'Processed'->>'unmatched_reference'))
  WHERE aggregate_type = 'webhook' AND event_type = 'Processed'
    AND payload->'Processed' ? 'unmatched_reference';
