-- A tenant's customers, per mode: whom the tenant bills. Periods are computed in the customer's
-- IANA timezone; `balance` is credit in minor units applied to the customer's next invoices.
-- Deleting a customer keeps the row (`deleted_at`) for what it was billed, but it answers 404
-- and its `external_id` is free again.
CREATE TABLE customers (
    id              UUID PRIMARY KEY,
    tenant_id       UUID NOT NULL REFERENCES tenants (id),
    livemode        BOOLEAN NOT NULL,
    email           TEXT,
    name            TEXT NOT NULL DEFAULT '',
    external_id     TEXT,
    currency        TEXT,
    timezone        TEXT NOT NULL DEFAULT 'UTC',
    address         JSONB,
    tax_ids         JSONB NOT NULL DEFAULT '[]'::jsonb,
    tax_exempt      BOOLEAN NOT NULL DEFAULT FALSE,
    invoice_prefix  TEXT,
    metadata        JSONB NOT NULL DEFAULT '{}'::jsonb,
    balance         BIGINT NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    deleted_at      TIMESTAMPTZ,
    CONSTRAINT customers_tenant_key UNIQUE (tenant_id, livemode, id)
);
CREATE UNIQUE INDEX customers_external_id_key ON customers (tenant_id, livemode, external_id)
    WHERE external_id IS NOT NULL AND deleted_at IS NULL;
