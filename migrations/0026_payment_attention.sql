-- A provider's report that money moved and could not be applied to the payment — a second
-- charge, a payment in another currency or amount, a refund above the payment
-- — is recorded on the payment's timeline (`ProviderStatusIgnored`) and, since staff must
-- act on it (refund the customer, correct the books), shown on the payment itself:
-- `attention` is `{status}:{reason}` of the latest such report (e.g. `paid:duplicate_charge`),
-- `attention_at` when it came. Written by the `payments` projection; admins list them with
-- `GET /v1/payments?attention=true`.
ALTER TABLE payments ADD COLUMN attention text, ADD COLUMN attention_at timestamptz;
CREATE INDEX payments_attention ON payments (requested_at DESC, id DESC)
    WHERE attention IS NOT NULL;
