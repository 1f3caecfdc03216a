-- Each (tenant, mode, id DESC) index repeats its table's (tenant, mode, id) unique key, which
-- PostgreSQL reads backwards as well: every write paid for both.
DROP INDEX subscriptions_tenant_idx;
DROP INDEX invoices_tenant_idx;
DROP INDEX payments_tenant_idx;
DROP INDEX credit_notes_tenant_idx;
DROP INDEX refunds_tenant_idx;
DROP INDEX tax_rates_tenant_idx;

-- An invoice's and a subscription's tenant is their customer's, which the (tenant, mode,
-- customer) foreign key already holds them to: checking the tenant again took a lock on its row
-- for every invoice written.
ALTER TABLE invoices DROP CONSTRAINT invoices_tenant_id_fkey;
ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_tenant_id_fkey;

-- Room on each page for the updates an invoice and a subscription go through (numbered, paid,
-- renewed), so that those not touching an indexed column stay on the page and skip the indexes.
ALTER TABLE invoices SET (fillfactor = 70);
ALTER TABLE subscriptions SET (fillfactor = 80);
