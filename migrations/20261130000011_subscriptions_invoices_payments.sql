-- Subscriptions, their invoices and the payments that pay them.
--
-- Exactly once by unique keys: one invoice per (subscription, period start) for the invoices a
-- subscription's periods produce; one payment per (invoice, attempt number), at most one of
-- them in flight per invoice.

-- A customer's subscription to one or more recurring prices of one currency and interval.
-- Periods are `[current_period_start, current_period_end)`, computed from the anchor's local
-- wall-clock time in `timezone` (the customer's when the subscription was created).
CREATE TABLE subscriptions (
    id                    UUID PRIMARY KEY,
    tenant_id             UUID NOT NULL REFERENCES tenants (id),
    livemode              BOOLEAN NOT NULL,
    customer_id           UUID NOT NULL,
    status                TEXT NOT NULL CHECK (status IN ('incomplete', 'incomplete_expired',
                              'trialing', 'active', 'past_due', 'unpaid', 'paused', 'canceled')),
    currency              TEXT NOT NULL,
    interval              TEXT NOT NULL CHECK (interval IN ('day', 'week', 'month', 'quarter', 'year')),
    interval_count        INTEGER NOT NULL CHECK (interval_count >= 1),
    timezone              TEXT NOT NULL,
    billing_cycle_anchor  TIMESTAMPTZ NOT NULL,
    -- The number of the current period counted from the anchor; -1 while trialing.
    current_period_index  INTEGER NOT NULL CHECK (current_period_index >= -1),
    current_period_start  TIMESTAMPTZ NOT NULL,
    current_period_end    TIMESTAMPTZ NOT NULL CHECK (current_period_end > current_period_start),
    trial_start           TIMESTAMPTZ,
    trial_end             TIMESTAMPTZ,
    collection_method     TEXT NOT NULL
                          CHECK (collection_method IN ('charge_automatically', 'send_invoice')),
    days_until_due        INTEGER CHECK (days_until_due BETWEEN 0 AND 365),
    proration_behavior    TEXT NOT NULL
                          CHECK (proration_behavior IN ('create_prorations', 'always_invoice', 'none')),
    cancel_at_period_end  BOOLEAN NOT NULL DEFAULT FALSE,
    canceled_at           TIMESTAMPTZ,
    ended_at              TIMESTAMPTZ,
    latest_invoice_id     UUID,
    metadata              JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL,
    CONSTRAINT subscriptions_tenant_key UNIQUE (tenant_id, livemode, id),
    CONSTRAINT subscriptions_customer_fkey FOREIGN KEY (tenant_id, livemode, customer_id)
        REFERENCES customers (tenant_id, livemode, id)
);
CREATE INDEX subscriptions_tenant_idx ON subscriptions (tenant_id, livemode, id DESC);
CREATE INDEX subscriptions_customer_idx ON subscriptions (customer_id, id DESC);

-- What a subscription bills each period: a price and a quantity.
CREATE TABLE subscription_items (
    id               UUID PRIMARY KEY,
    tenant_id        UUID NOT NULL,
    livemode         BOOLEAN NOT NULL,
    subscription_id  UUID NOT NULL,
    price_id         UUID NOT NULL REFERENCES prices (id),
    quantity         BIGINT NOT NULL CHECK (quantity >= 0),
    created_at       TIMESTAMPTZ NOT NULL,
    deleted_at       TIMESTAMPTZ,
    CONSTRAINT subscription_items_subscription_fkey FOREIGN KEY (tenant_id, livemode, subscription_id)
        REFERENCES subscriptions (tenant_id, livemode, id)
);
CREATE INDEX subscription_items_subscription_idx ON subscription_items (subscription_id)
    WHERE deleted_at IS NULL;

CREATE TABLE invoices (
    id                 UUID PRIMARY KEY,
    tenant_id          UUID NOT NULL REFERENCES tenants (id),
    livemode           BOOLEAN NOT NULL,
    customer_id        UUID NOT NULL,
    subscription_id    UUID,
    status             TEXT NOT NULL
                       CHECK (status IN ('draft', 'open', 'paid', 'void', 'uncollectible')),
    -- Assigned at finalization from `invoice_number_counters`.
    number             TEXT,
    currency           TEXT NOT NULL,
    billing_reason     TEXT NOT NULL CHECK (billing_reason IN ('subscription_create',
                           'subscription_cycle', 'subscription_update', 'manual')),
    collection_method  TEXT NOT NULL
                       CHECK (collection_method IN ('charge_automatically', 'send_invoice')),
    period_start       TIMESTAMPTZ NOT NULL,
    period_end         TIMESTAMPTZ NOT NULL CHECK (period_end >= period_start),
    subtotal           BIGINT NOT NULL,
    discount           BIGINT NOT NULL DEFAULT 0 CHECK (discount >= 0),
    tax                BIGINT NOT NULL DEFAULT 0 CHECK (tax >= 0),
    total              BIGINT NOT NULL,
    balance_applied    BIGINT NOT NULL DEFAULT 0 CHECK (balance_applied >= 0),
    amount_due         BIGINT NOT NULL CHECK (amount_due >= 0),
    amount_paid        BIGINT NOT NULL DEFAULT 0 CHECK (amount_paid >= 0),
    amount_remaining   BIGINT NOT NULL CHECK (amount_remaining >= 0),
    attempt_count      INTEGER NOT NULL DEFAULT 0,
    due_date           TIMESTAMPTZ,
    finalized_at       TIMESTAMPTZ,
    paid_at            TIMESTAMPTZ,
    voided_at          TIMESTAMPTZ,
    metadata           JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    CONSTRAINT invoices_tenant_key UNIQUE (tenant_id, livemode, id),
    CONSTRAINT invoices_number_key UNIQUE (tenant_id, livemode, number),
    CONSTRAINT invoices_customer_fkey FOREIGN KEY (tenant_id, livemode, customer_id)
        REFERENCES customers (tenant_id, livemode, id),
    CONSTRAINT invoices_subscription_fkey FOREIGN KEY (tenant_id, livemode, subscription_id)
        REFERENCES subscriptions (tenant_id, livemode, id)
);
CREATE INDEX invoices_tenant_idx ON invoices (tenant_id, livemode, id DESC);
CREATE INDEX invoices_customer_idx ON invoices (customer_id, id DESC);
-- One invoice per subscription period.
CREATE UNIQUE INDEX invoices_subscription_period_key ON invoices (subscription_id, period_start)
    WHERE billing_reason IN ('subscription_create', 'subscription_cycle');

CREATE TABLE invoice_lines (
    id                    UUID PRIMARY KEY,
    tenant_id             UUID NOT NULL,
    livemode              BOOLEAN NOT NULL,
    invoice_id            UUID NOT NULL,
    position              INTEGER NOT NULL,
    description           TEXT NOT NULL,
    price_id              UUID,
    subscription_item_id  UUID,
    quantity              BIGINT NOT NULL,
    unit_amount           BIGINT,
    amount                BIGINT NOT NULL,
    discount_amount       BIGINT NOT NULL DEFAULT 0,
    proration             BOOLEAN NOT NULL DEFAULT FALSE,
    period_start          TIMESTAMPTZ NOT NULL,
    period_end            TIMESTAMPTZ NOT NULL,
    CONSTRAINT invoice_lines_invoice_fkey FOREIGN KEY (tenant_id, livemode, invoice_id)
        REFERENCES invoices (tenant_id, livemode, id),
    CONSTRAINT invoice_lines_position_key UNIQUE (invoice_id, position)
);

-- One row per payment attempt of an invoice, with the gateway's answer. The gateway call
-- carries `idempotency_key` (derived from the invoice and the attempt), so a retried attempt
-- never charges twice.
CREATE TABLE payments (
    id                 UUID PRIMARY KEY,
    tenant_id          UUID NOT NULL,
    livemode           BOOLEAN NOT NULL,
    invoice_id         UUID NOT NULL,
    customer_id        UUID NOT NULL,
    attempt            INTEGER NOT NULL CHECK (attempt >= 1),
    amount             BIGINT NOT NULL CHECK (amount >= 0),
    currency           TEXT NOT NULL,
    application_fee    BIGINT NOT NULL DEFAULT 0,
    status             TEXT NOT NULL
                       CHECK (status IN ('pending', 'succeeded', 'failed', 'requires_action')),
    gateway            TEXT NOT NULL CHECK (gateway IN ('sandbox', 'stripe')),
    gateway_id         TEXT,
    idempotency_key    TEXT NOT NULL,
    payment_method_id  UUID,
    failure_code       TEXT,
    failure_message    TEXT,
    hard_decline       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    CONSTRAINT payments_tenant_key UNIQUE (tenant_id, livemode, id),
    CONSTRAINT payments_invoice_fkey FOREIGN KEY (tenant_id, livemode, invoice_id)
        REFERENCES invoices (tenant_id, livemode, id),
    CONSTRAINT payments_attempt_key UNIQUE (invoice_id, attempt)
);
CREATE INDEX payments_tenant_idx ON payments (tenant_id, livemode, id DESC);
-- At most one attempt in flight per invoice.
CREATE UNIQUE INDEX payments_in_flight_key ON payments (invoice_id) WHERE status = 'pending';
