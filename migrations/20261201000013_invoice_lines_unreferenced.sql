-- An invoice's lines are written with it, in the transaction that makes it, keyed by its tenant
-- and mode (db::invoices::insert_lines_many), and only a draft's are ever deleted (before the
-- draft itself). The foreign key to invoices checked each line by locking the invoice row the
-- same transaction had just written (FOR KEY SHARE: a heap change and a WAL record per line):
-- under concurrent batch renewals that check was the costliest step of a renewal, for a
-- reference nothing else can break. Lines keep their tenant and mode, as every row does.
ALTER TABLE invoice_lines DROP CONSTRAINT invoice_lines_invoice_fkey;
