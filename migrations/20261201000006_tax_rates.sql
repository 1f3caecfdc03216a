-- Tax rates: a tenant's rates, in parts per million of the taxed amount (8.875 % = 88750),
-- exclusive (added on top) or inclusive (already inside the prices). The tenant's default
-- rates apply to every customer that names none of its own (`customers.tax_rate_ids`); a
-- tax-exempt customer pays none. An invoice keeps what each rate took (`tax_amounts`), as it was
-- when the invoice was made.

CREATE TABLE tax_rates (
    id            UUID PRIMARY KEY,
    tenant_id     UUID NOT NULL REFERENCES tenants (id),
    livemode      BOOLEAN NOT NULL,
    display_name  TEXT NOT NULL,
    description   TEXT,
    jurisdiction  TEXT,
    rate_ppm      INTEGER NOT NULL CHECK (rate_ppm BETWEEN 0 AND 1000000),
    inclusive     BOOLEAN NOT NULL,
    -- Applied to customers that name no rates of their own.
    is_default    BOOLEAN NOT NULL DEFAULT FALSE,
    active        BOOLEAN NOT NULL DEFAULT TRUE,
    metadata      JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    CONSTRAINT tax_rates_tenant_key UNIQUE (tenant_id, livemode, id)
);
CREATE INDEX tax_rates_tenant_idx ON tax_rates (tenant_id, livemode, id DESC);

ALTER TABLE customers ADD COLUMN tax_rate_ids UUID[] NOT NULL DEFAULT '{}';
ALTER TABLE invoices ADD COLUMN tax_amounts JSONB NOT NULL DEFAULT '[]'::jsonb;
