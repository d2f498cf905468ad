-- Owner: projector (`payments` projection). Every charge of a payment is a row of
-- `payment_charges`, the one that paid it too (`reason` `payment`), beside the duplicates
-- (`duplicate_charge`) and the charges in another amount or currency (`amount_mismatch`). What
-- the payment kept — its own charge and its duplicates, less their refunds, whichever was
-- refunded — gives its `refunded` and status, so the outcome does not depend on which of two
-- identical charges the provider reported first. `attention` is derived: money held beyond
-- the total, a mismatched charge not wholly returned, else the latest other report
-- (`report_flag`: a provider mismatch, a refund above what was paid).
ALTER TABLE payment_charges ADD COLUMN reason text NOT NULL DEFAULT 'duplicate_charge';

ALTER TABLE payments ADD COLUMN report_flag text, ADD COLUMN report_flag_at timestamptz;

UPDATE payments SET report_flag = attention, report_flag_at = attention_at
 WHERE attention IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM payment_charges c
                    WHERE c.payment_id = payments.id AND c.refunded < c.amount);

INSERT INTO payment_charges (payment_id, provider_reference, tenant_id, amount, currency,
                             refunded, webhook_id, charged_at, reason)
SELECT p.id, p.provider_reference, p.tenant_id, p.total, p.currency,
       -- Refunds so far were all of the charge that paid it.
       p.refunded,
       coalesce((SELECT e.payload->'Paid'->>'webhook_id' FROM events e
                  WHERE e.aggregate_type = 'payment' AND e.aggregate_id = p.id::text
                    AND e.event_type = 'Paid' LIMIT 1), ''),
       p.paid_at, 'payment'
  FROM payments p
 WHERE p.paid_at IS NOT NULL AND p.provider_reference IS NOT NULL
ON CONFLICT DO NOTHING;
