-- Invoice numbers: one counter row per (tenant, mode, prefix), taken and bumped in the
-- transaction that finalizes the invoice. The row lock makes concurrent finalizations take
-- turns, and a rollback gives its number back, so numbers are sequential without gaps (a SQL
-- sequence would leave gaps on rollback).
CREATE TABLE invoice_number_counters (
    tenant_id   UUID NOT NULL REFERENCES tenants (id),
    livemode    BOOLEAN NOT NULL,
    prefix      TEXT NOT NULL,
    last_number BIGINT NOT NULL CHECK (last_number >= 1),
    PRIMARY KEY (tenant_id, livemode, prefix)
);
