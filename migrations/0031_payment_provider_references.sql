-- no-transaction
-- Owner: command-api (webhooks). A Stripe event that names only a payment intent (a refund
-- without our `metadata.payment_id`) finds the payment paid, or charged again, through that
-- intent in the payments' own events (events::payment::lookups::PAID_WITH), not in a read model that
-- may lag; the projector's `payment-references` worker asks the same when such a payment is
-- paid after the refund was recorded as unmatched.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_payment_provider_references ON events
    ((coalesce(payload->'Paid'->>'provider_reference',
               payload->'ChargedAgain'->>'provider_reference')))
  WHERE aggregate_type = 'payment' AND event_type IN ('Paid', 'ChargedAgain');
