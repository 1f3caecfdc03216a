-- One-off invoicing: invoice items a tenant adds for a customer (not only the prorations of
-- subscription changes), drafts that collect them, and a record of invoices sent.
--
-- An item is pending while `invoice_id` is NULL; a draft invoice holds its items (and shows them
-- as its lines) until it is finalized; deleting the draft makes them pending again.

ALTER TABLE invoice_items ADD COLUMN currency TEXT;
UPDATE invoice_items i SET currency = s.currency FROM subscriptions s WHERE s.id = i.subscription_id;
ALTER TABLE invoice_items ALTER COLUMN currency SET NOT NULL;
ALTER TABLE invoice_items ADD COLUMN metadata JSONB NOT NULL DEFAULT '{}'::jsonb;
CREATE INDEX invoice_items_tenant_idx ON invoice_items (tenant_id, livemode, id DESC);
CREATE INDEX invoice_items_customer_pending_idx ON invoice_items (customer_id, created_at)
    WHERE invoice_id IS NULL AND subscription_id IS NULL;
CREATE INDEX invoice_items_invoice_idx ON invoice_items (invoice_id) WHERE invoice_id IS NOT NULL;

ALTER TABLE invoices ADD COLUMN description TEXT;
-- When the invoice was last sent to the customer (`POST /api/v1/invoices/{id}/send`).
ALTER TABLE invoices ADD COLUMN sent_at TIMESTAMPTZ;
-- What a draft was created with, applied when it is finalized (`due_date`) or whenever its
-- lines change (the coupon's discount).
ALTER TABLE invoices ADD COLUMN days_until_due INTEGER CHECK (days_until_due BETWEEN 0 AND 365);
ALTER TABLE invoices ADD COLUMN coupon_id UUID;
