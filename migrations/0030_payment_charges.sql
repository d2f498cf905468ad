-- Owner: projector (`payments` projection). A customer charged again for a payment already
-- paid (a second checkout of the same payment, another transaction) is tracked beside the
-- payment (`ChargedAgain`), with what was refunded of it since (`ChargeRefunded`). The
-- payment itself keeps what it was paid; while a charge is not wholly refunded, the payment's
-- `attention` is `paid:duplicate_charge` (migration 0026).
CREATE TABLE payment_charges (
    payment_id         uuid        NOT NULL,
    -- The provider's transaction (Stripe payment intent, Lyra transaction uuid).
    provider_reference text        NOT NULL,
    tenant_id          text        NOT NULL,
    amount             bigint      NOT NULL,
    currency           text        NOT NULL,
    refunded           bigint      NOT NULL DEFAULT 0,
    -- The webhook that reported the charge.
    webhook_id         text        NOT NULL,
    charged_at         timestamptz NOT NULL,
    PRIMARY KEY (payment_id, provider_reference)
);
