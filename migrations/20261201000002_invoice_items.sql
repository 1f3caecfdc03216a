-- Invoice items: lines waiting for an invoice (proration lines of a subscription change made
-- with `create_prorations`, billed on the next invoice). `invoice_id` is set when an invoice
-- takes them, in that invoice's transaction.

CREATE TABLE invoice_items (
    id                    UUID PRIMARY KEY,
    tenant_id             UUID NOT NULL,
    livemode              BOOLEAN NOT NULL,
    customer_id           UUID NOT NULL,
    subscription_id       UUID,
    subscription_item_id  UUID,
    price_id              UUID,
    description           TEXT NOT NULL,
    quantity              BIGINT NOT NULL,
    unit_amount           BIGINT,
    amount                BIGINT NOT NULL,
    proration             BOOLEAN NOT NULL DEFAULT FALSE,
    period_start          TIMESTAMPTZ NOT NULL,
    period_end            TIMESTAMPTZ NOT NULL CHECK (period_end >= period_start),
    invoice_id            UUID,
    created_at            TIMESTAMPTZ NOT NULL,
    CONSTRAINT invoice_items_customer_fkey FOREIGN KEY (tenant_id, livemode, customer_id)
        REFERENCES customers (tenant_id, livemode, id),
    CONSTRAINT invoice_items_subscription_fkey FOREIGN KEY (tenant_id, livemode, subscription_id)
        REFERENCES subscriptions (tenant_id, livemode, id),
    CONSTRAINT invoice_items_invoice_fkey FOREIGN KEY (tenant_id, livemode, invoice_id)
        REFERENCES invoices (tenant_id, livemode, id)
);
CREATE INDEX invoice_items_pending_idx ON invoice_items (subscription_id, created_at)
    WHERE invoice_id IS NULL;
CREATE INDEX invoice_lines_item_idx ON invoice_lines (subscription_item_id, period_end)
    WHERE subscription_item_id IS NOT NULL;
