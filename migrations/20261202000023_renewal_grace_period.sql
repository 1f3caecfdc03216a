-- A tenant's invoicing settings, per mode: how long a renewal invoice that bills usage stays a
-- draft after its period ends (usage for the period is still recorded meanwhile).
CREATE TABLE invoice_settings (
    tenant_id          UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    livemode           BOOLEAN NOT NULL,
    grace_period_hours INTEGER NOT NULL CHECK (grace_period_hours BETWEEN 0 AND 168),
    updated_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, livemode)
);

-- Usage before this instant is on the subscription's renewal invoice that is still a draft
-- (the one of the period starting then): billed when it is finalized.
ALTER TABLE subscriptions ADD COLUMN usage_draft_until TIMESTAMPTZ;
