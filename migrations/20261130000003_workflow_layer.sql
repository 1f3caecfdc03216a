-- Statuses of received Stripe events, as a checked column: events stored as `ignored` keep
-- their payload and can be made `received` again to be processed once the platform acts on
-- their type.
ALTER TABLE stripe_events
    ADD COLUMN status TEXT NOT NULL DEFAULT 'received'
        CHECK (status IN ('received', 'applied', 'stale', 'ignored'));
UPDATE stripe_events SET status = CASE
        WHEN processed_at IS NULL THEN 'received'
        WHEN outcome LIKE 'applied%' THEN 'applied'
        WHEN outcome LIKE 'stale%' THEN 'stale'
        ELSE 'ignored'
    END;
CREATE INDEX stripe_events_ignored_idx ON stripe_events (type) WHERE status = 'ignored';

-- The seed's mirror of the connection status, checked like the account's own.
ALTER TABLE tenants ADD CONSTRAINT tenants_stripe_connect_status_check
    CHECK (stripe_connect_status IN ('not_connected', 'onboarding', 'connected', 'disconnected'));

-- API keys are listed by tenant.
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, livemode);
