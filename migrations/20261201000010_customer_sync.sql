-- Customers and their payment methods are mirrored on the tenant's connected Stripe account by
-- `stripe_sync` jobs, as catalog objects are: a version counter bumped by every change, the
-- version Stripe has, the Stripe id recorded the moment it exists.
ALTER TABLE customers ADD COLUMN stripe_customer_id TEXT;
ALTER TABLE customers ADD COLUMN sync_status TEXT NOT NULL DEFAULT 'not_synced'
    CHECK (sync_status IN ('pending', 'synced', 'failed', 'not_synced'));
ALTER TABLE customers ADD COLUMN sync_error TEXT;
ALTER TABLE customers ADD COLUMN sync_version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE customers ADD COLUMN synced_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE customers ADD COLUMN synced_at TIMESTAMPTZ;

ALTER TABLE payment_methods ADD COLUMN stripe_payment_method_id TEXT;
ALTER TABLE payment_methods ADD COLUMN sync_status TEXT NOT NULL DEFAULT 'not_synced'
    CHECK (sync_status IN ('pending', 'synced', 'failed', 'not_synced'));
ALTER TABLE payment_methods ADD COLUMN sync_error TEXT;
ALTER TABLE payment_methods ADD COLUMN sync_version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE payment_methods ADD COLUMN synced_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE payment_methods ADD COLUMN synced_at TIMESTAMPTZ;
