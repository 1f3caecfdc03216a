-- Money a payment brought that no invoice needed (it landed on an invoice paid or voided
-- meanwhile, or on one a credit note lowered) is the customer's credit; it is counted on the
-- payment so that it is never refunded as well: refunds and that credit never exceed the
-- payment.
ALTER TABLE payments ADD COLUMN credited_to_balance BIGINT NOT NULL DEFAULT 0
    CHECK (credited_to_balance >= 0);
ALTER TABLE payments DROP CONSTRAINT payments_refunded_within_amount;
ALTER TABLE payments ADD CONSTRAINT payments_refunded_within_amount
    CHECK (amount_refunded + credited_to_balance <= amount);

-- Opening balance rows get time-ordered ids (a UUIDv7 of when they were written), so that they
-- sort before every later row of the ledger.
UPDATE customer_balance_transactions
SET id = (lpad(to_hex((extract(epoch FROM created_at) * 1000)::bigint), 12, '0')
          || '7' || substr(replace(id::text, '-', ''), 14))::uuid
WHERE type = 'adjustment' AND description = 'Opening balance' AND substr(id::text, 15, 1) = '4';
