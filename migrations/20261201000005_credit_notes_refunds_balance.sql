-- Credit notes, refunds and the customer balance ledger.
--
-- - Every change of `customers.balance` (credit in minor units) is a row of
--   `customer_balance_transactions` with the balance after it, written in the same transaction.
-- - A credit note reduces what an open invoice still owes (pre-payment) or, after payment,
--   returns money by refund, customer credit or outside the platform (post-payment). The credit
--   notes of an invoice never add up to more than its total: `invoices.amount_credited` is
--   raised under the invoice's lock and checked by a constraint.
-- - A refund returns part or all of a succeeded payment through the gateway that took it.
--   `payments.amount_refunded` counts refunds pending or succeeded (raised under the invoice's
--   lock when the refund is created, lowered again if it fails), so refunds never exceed the
--   payment.

CREATE TABLE customer_balance_transactions (
    id              UUID PRIMARY KEY,
    tenant_id       UUID NOT NULL,
    livemode        BOOLEAN NOT NULL,
    customer_id     UUID NOT NULL,
    type            TEXT NOT NULL CHECK (type IN ('adjustment', 'applied_to_invoice',
                        'unapplied_from_invoice', 'invoice_credit', 'credit_note',
                        'overpayment', 'refund_failed')),
    -- Positive: credit given; negative: credit used.
    amount          BIGINT NOT NULL CHECK (amount <> 0),
    ending_balance  BIGINT NOT NULL,
    invoice_id      UUID,
    credit_note_id  UUID,
    description     TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    CONSTRAINT customer_balance_transactions_customer_fkey FOREIGN KEY (tenant_id, livemode, customer_id)
        REFERENCES customers (tenant_id, livemode, id)
);
CREATE INDEX customer_balance_transactions_customer_idx
    ON customer_balance_transactions (customer_id, id DESC);

-- Balances given before the ledger open it.
INSERT INTO customer_balance_transactions
    (id, tenant_id, livemode, customer_id, type, amount, ending_balance, description, created_at)
SELECT gen_random_uuid(), tenant_id, livemode, id, 'adjustment', balance, balance,
       'Opening balance', now()
FROM customers WHERE balance <> 0;

ALTER TABLE invoices ADD COLUMN amount_credited BIGINT NOT NULL DEFAULT 0
    CHECK (amount_credited >= 0);
ALTER TABLE invoices ADD CONSTRAINT invoices_credited_within_total
    CHECK (amount_credited <= GREATEST(total, 0));
ALTER TABLE invoices ADD COLUMN credit_note_count INTEGER NOT NULL DEFAULT 0;

CREATE TABLE credit_notes (
    id                  UUID PRIMARY KEY,
    tenant_id           UUID NOT NULL,
    livemode            BOOLEAN NOT NULL,
    invoice_id          UUID NOT NULL,
    customer_id         UUID NOT NULL,
    -- The invoice's number and the note's rank on it: `ACME-000123-CN1`.
    number              TEXT NOT NULL,
    currency            TEXT NOT NULL,
    type                TEXT NOT NULL CHECK (type IN ('pre_payment', 'post_payment')),
    amount              BIGINT NOT NULL CHECK (amount > 0),
    refund_amount       BIGINT NOT NULL DEFAULT 0 CHECK (refund_amount >= 0),
    credit_amount       BIGINT NOT NULL DEFAULT 0 CHECK (credit_amount >= 0),
    out_of_band_amount  BIGINT NOT NULL DEFAULT 0 CHECK (out_of_band_amount >= 0),
    reason              TEXT CHECK (reason IN ('duplicate', 'fraudulent', 'order_change',
                            'product_unsatisfactory')),
    memo                TEXT,
    refund_id           UUID,
    metadata            JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at          TIMESTAMPTZ NOT NULL,
    CONSTRAINT credit_notes_tenant_key UNIQUE (tenant_id, livemode, id),
    CONSTRAINT credit_notes_number_key UNIQUE (invoice_id, number),
    CONSTRAINT credit_notes_invoice_fkey FOREIGN KEY (tenant_id, livemode, invoice_id)
        REFERENCES invoices (tenant_id, livemode, id),
    -- After payment the amount goes somewhere: refunded, credited, or paid back outside.
    CONSTRAINT credit_notes_split CHECK (type = 'pre_payment'
        OR refund_amount + credit_amount + out_of_band_amount = amount),
    CONSTRAINT credit_notes_pre_payment CHECK (type = 'post_payment'
        OR refund_amount + credit_amount + out_of_band_amount = 0)
);
CREATE INDEX credit_notes_tenant_idx ON credit_notes (tenant_id, livemode, id DESC);
CREATE INDEX credit_notes_invoice_idx ON credit_notes (invoice_id);

CREATE TABLE credit_note_lines (
    id               UUID PRIMARY KEY,
    tenant_id        UUID NOT NULL,
    livemode         BOOLEAN NOT NULL,
    credit_note_id   UUID NOT NULL,
    position         INTEGER NOT NULL,
    -- The invoice line it credits, or none (a custom line).
    invoice_line_id  UUID,
    description      TEXT NOT NULL,
    amount           BIGINT NOT NULL CHECK (amount > 0),
    CONSTRAINT credit_note_lines_note_fkey FOREIGN KEY (tenant_id, livemode, credit_note_id)
        REFERENCES credit_notes (tenant_id, livemode, id),
    CONSTRAINT credit_note_lines_position_key UNIQUE (credit_note_id, position)
);
CREATE INDEX credit_note_lines_invoice_line_idx ON credit_note_lines (invoice_line_id)
    WHERE invoice_line_id IS NOT NULL;

ALTER TABLE payments ADD COLUMN amount_refunded BIGINT NOT NULL DEFAULT 0
    CHECK (amount_refunded >= 0);
ALTER TABLE payments ADD CONSTRAINT payments_refunded_within_amount
    CHECK (amount_refunded <= amount);

CREATE TABLE refunds (
    id               UUID PRIMARY KEY,
    tenant_id        UUID NOT NULL,
    livemode         BOOLEAN NOT NULL,
    payment_id       UUID NOT NULL,
    invoice_id       UUID NOT NULL,
    customer_id      UUID NOT NULL,
    credit_note_id   UUID,
    amount           BIGINT NOT NULL CHECK (amount > 0),
    currency         TEXT NOT NULL,
    reason           TEXT CHECK (reason IN ('duplicate', 'fraudulent', 'requested_by_customer')),
    status           TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    gateway          TEXT NOT NULL CHECK (gateway IN ('sandbox', 'stripe')),
    gateway_id       TEXT,
    -- The refund's own id: a retried gateway call never refunds twice.
    idempotency_key  TEXT NOT NULL,
    failure_reason   TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    CONSTRAINT refunds_tenant_key UNIQUE (tenant_id, livemode, id),
    CONSTRAINT refunds_payment_fkey FOREIGN KEY (tenant_id, livemode, payment_id)
        REFERENCES payments (tenant_id, livemode, id)
);
CREATE INDEX refunds_tenant_idx ON refunds (tenant_id, livemode, id DESC);
CREATE INDEX refunds_payment_idx ON refunds (payment_id);
