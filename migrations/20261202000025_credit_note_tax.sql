-- A credit note of invoice lines gives back the invoice's tax on what it credits: `amount`
-- (what it credits) is its lines (`subtotal`) plus the exclusive part of that tax; `tax` is all
-- of it, inclusive and exclusive, and `tax_amounts` its part per rate, as invoices show theirs.
-- Notes issued before gave back no tax: their lines are their amount.
SET LOCAL lock_timeout = '10s';
ALTER TABLE credit_notes
    ADD COLUMN subtotal BIGINT,
    ADD COLUMN tax BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN tax_amounts JSONB NOT NULL DEFAULT '[]'::jsonb;
UPDATE credit_notes SET subtotal = amount;
ALTER TABLE credit_notes
    ALTER COLUMN subtotal SET NOT NULL,
    ADD CONSTRAINT credit_notes_tax_added CHECK (amount >= subtotal);
