-- Webhook ingestion and payments.

-- Command side: webhooks that failed verification. They were never accepted, so they are
-- not events; an operator reads the newest here (GET /v1/webhooks/rejections). Capped:
-- command-api deletes all but the newest 1,000 after each insert.
CREATE TABLE webhook_rejections (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- stripe | lyra | …
    provider     text        NOT NULL,
    -- A stable code: missing_signature, bad_signature, stale_timestamp, …
    reason       text        NOT NULL,
    -- The signature header or field as received (at most 512 characters).
    signature    text,
    -- The first 2 KiB of the body, for diagnosis.
    body_excerpt text        NOT NULL,
    body_bytes   integer     NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

-- Read model of `webhook` events: what admins list, and the process manager's queue.
CREATE TABLE webhooks (
    id                uuid        PRIMARY KEY,
    -- The payment's tenant when the webhook named a known payment, else 'platform'.
    tenant_id         text        NOT NULL,
    provider          text        NOT NULL,
    provider_event_id text        NOT NULL,
    event_type        text        NOT NULL,
    payment_id        text,
    -- received | retrying | processed | dead
    status            text        NOT NULL,
    -- applied | recorded | ignored (once processed)
    outcome           text,
    detail            text,
    attempts          integer     NOT NULL DEFAULT 0,
    last_error        text,
    -- When the process manager (next) takes it; null once processed or dead.
    next_attempt_at   timestamptz,
    received_at       timestamptz NOT NULL,
    processed_at      timestamptz,
    updated_at        timestamptz NOT NULL,
    version           bigint      NOT NULL
);
CREATE INDEX webhooks_due ON webhooks (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX webhooks_recent ON webhooks (received_at DESC, id DESC);
CREATE INDEX webhooks_tenant ON webhooks (tenant_id, received_at DESC, id DESC);
CREATE INDEX webhooks_payment ON webhooks (payment_id) WHERE payment_id IS NOT NULL;

-- Read models of `catalog` events.
CREATE TABLE catalog_taxes (
    tenant_id  text        NOT NULL,
    id         text        NOT NULL,
    name       text        NOT NULL,
    rate_bp    integer     NOT NULL,
    included   boolean     NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE catalog_products (
    tenant_id  text        NOT NULL,
    id         text        NOT NULL,
    name       text        NOT NULL,
    unit_price bigint      NOT NULL,
    currency   text        NOT NULL,
    tax_id     text,
    active     boolean     NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- Read models of `payment` events.
CREATE TABLE payments (
    id                 uuid        PRIMARY KEY,
    tenant_id          text        NOT NULL,
    -- lyra | stripe
    provider           text        NOT NULL,
    -- requested | link_created | paid | failed | expired | cancelled | partially_refunded | refunded
    status             text        NOT NULL,
    currency           text        NOT NULL,
    net                bigint      NOT NULL,
    tax                bigint      NOT NULL,
    total              bigint      NOT NULL,
    refunded           bigint      NOT NULL DEFAULT 0,
    customer_reference text        NOT NULL,
    description        text,
    provider_order_id  text,
    -- The provider's transaction once paid (Stripe payment intent, Lyra transaction).
    provider_reference text,
    link_url           text,
    link_expires_at    timestamptz,
    last_error         text,
    requested_at       timestamptz NOT NULL,
    paid_at            timestamptz,
    updated_at         timestamptz NOT NULL,
    version            bigint      NOT NULL
);
CREATE INDEX payments_tenant ON payments (tenant_id, requested_at DESC, id DESC);
CREATE INDEX payments_recent ON payments (requested_at DESC, id DESC);
CREATE INDEX payments_paid ON payments (paid_at) WHERE paid_at IS NOT NULL;
CREATE INDEX payments_provider_reference ON payments (provider_reference) WHERE provider_reference IS NOT NULL;

-- A payment's lines as requested (product, quantity and the amounts then).
CREATE TABLE payment_lines (
    payment_id   uuid    NOT NULL,
    n            integer NOT NULL,
    tenant_id    text    NOT NULL,
    product_id   text    NOT NULL,
    name         text    NOT NULL,
    quantity     integer NOT NULL,
    unit_price   bigint  NOT NULL,
    tax_name     text,
    rate_bp      integer,
    net          bigint  NOT NULL,
    tax          bigint  NOT NULL,
    gross        bigint  NOT NULL,
    PRIMARY KEY (payment_id, n)
);

-- Each refund on its day (reports net refunds on the day they happen).
CREATE TABLE payment_refunds (
    payment_id  uuid        NOT NULL,
    -- The event's sequence in the payment's stream.
    sequence    bigint      NOT NULL,
    tenant_id   text        NOT NULL,
    amount      bigint      NOT NULL,
    webhook_id  text        NOT NULL,
    refunded_at timestamptz NOT NULL,
    PRIMARY KEY (payment_id, sequence)
);
CREATE INDEX payment_refunds_day ON payment_refunds (refunded_at);
