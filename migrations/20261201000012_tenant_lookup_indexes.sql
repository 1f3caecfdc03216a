-- Lookups of one invoice's payments and of one subscription's period invoice name the tenant
-- and mode too. With an index on the child key alone, a plan made while the table was small
-- (a prepared statement's generic plan, kept for the connection's life) intersects it with the
-- tenant index and reads all the tenant's rows on every call. Indexes that hold every column
-- the lookups compare keep them one index probe however the tables grow.
CREATE INDEX payments_invoice_idx ON payments (tenant_id, livemode, invoice_id, attempt);
CREATE INDEX invoices_subscription_period_idx
    ON invoices (tenant_id, livemode, subscription_id, period_start);
