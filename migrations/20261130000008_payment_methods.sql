-- A customer's payment methods: what the gateway charges (a Stripe PaymentMethod id, or in the
-- sandbox Stripe's test payment method such as `pm_card_visa`), and what is shown of the card.
-- Nothing else of a card is stored: never its number. Detached methods keep their row.
CREATE TABLE payment_methods (
    id            UUID PRIMARY KEY,
    tenant_id     UUID NOT NULL,
    livemode      BOOLEAN NOT NULL,
    customer_id   UUID NOT NULL,
    gateway_token TEXT NOT NULL,
    brand         TEXT NOT NULL,
    last4         TEXT NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    exp_month     INTEGER NOT NULL CHECK (exp_month BETWEEN 1 AND 12),
    exp_year      INTEGER NOT NULL CHECK (exp_year BETWEEN 2000 AND 2200),
    is_default    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    TIMESTAMPTZ NOT NULL,
    detached_at   TIMESTAMPTZ,
    CONSTRAINT payment_methods_tenant_key UNIQUE (tenant_id, livemode, id),
    CONSTRAINT payment_methods_customer_fkey FOREIGN KEY (tenant_id, livemode, customer_id)
        REFERENCES customers (tenant_id, livemode, id)
);
CREATE INDEX payment_methods_customer_idx ON payment_methods (customer_id, id DESC)
    WHERE detached_at IS NULL;
-- At most one default per customer.
CREATE UNIQUE INDEX payment_methods_default_key ON payment_methods (customer_id)
    WHERE is_default AND detached_at IS NULL;
