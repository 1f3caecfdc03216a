-- Fewer index and constraint writes per renewal (each renewal writes an invoice, its number, a
-- payment and several events).
SET LOCAL lock_timeout = '10s';

-- Invoice numbers are unique per tenant and mode in a table of their own, written once when a
-- number is taken. On the invoice, the index holding them made the number's update (at the
-- commit that finalizes it) move the row in every index of the table; without it the update
-- stays on the row's page. The constraint goes first, so that no invoice is numbered between
-- the copy and the drop.
ALTER TABLE invoices DROP CONSTRAINT invoices_number_key;
CREATE TABLE invoice_numbers (
    tenant_id   UUID NOT NULL,
    livemode    BOOLEAN NOT NULL,
    number      TEXT NOT NULL,
    invoice_id  UUID NOT NULL,
    PRIMARY KEY (tenant_id, livemode, number)
);
INSERT INTO invoice_numbers (tenant_id, livemode, number, invoice_id)
    SELECT tenant_id, livemode, number, id FROM invoices WHERE number IS NOT NULL;

-- Events are purged by their id (a version 7 id tells when the event was recorded), which the
-- primary key orders: the index on created_at only cost every event written. Their tenant is
-- the scope they were recorded in; checking it again took a lock on the tenant's row for every
-- event written (as for invoices, 20261202000024).
DROP INDEX events_created_idx;
ALTER TABLE events DROP CONSTRAINT events_tenant_id_fkey;

-- One attempt per (invoice, attempt number): a payment's tenant and mode are its invoice's (the
-- foreign key holds them to it), so the lookup index on (tenant, mode, invoice, attempt) can be
-- the unique one, and the other index goes.
ALTER TABLE payments DROP CONSTRAINT payments_attempt_key;
DROP INDEX payments_invoice_idx;
ALTER TABLE payments
    ADD CONSTRAINT payments_attempt_key UNIQUE (tenant_id, livemode, invoice_id, attempt);
