-- A tenant's dunning policy per mode: the waits before each retry of a declined charge, and
-- what happens when dunning gives up. No row: the default policy (3, 5 and 7 days; cancel).
CREATE TABLE dunning_settings (
    tenant_id          UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    livemode           BOOLEAN NOT NULL,
    retry_waits_days   INTEGER[] NOT NULL,
    final_action       TEXT NOT NULL
        CHECK (final_action IN ('cancel', 'mark_unpaid', 'leave_past_due')),
    mark_uncollectible BOOLEAN NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, livemode)
);

-- Invoices whose dunning is over (its final action taken): a new payment method of their
-- customer no longer retries them.
CREATE TABLE dunning_ended (
    tenant_id  UUID NOT NULL,
    livemode   BOOLEAN NOT NULL,
    invoice_id UUID NOT NULL,
    attempt    INTEGER NOT NULL,
    ended_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, livemode, invoice_id),
    FOREIGN KEY (tenant_id, livemode, invoice_id)
        REFERENCES invoices (tenant_id, livemode, id) ON DELETE CASCADE
);
