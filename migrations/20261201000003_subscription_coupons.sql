-- A coupon redeemed on a subscription discounts its period invoices while its duration lasts
-- (once, for N months from the redemption, forever); `coupon_invoices` counts the period
-- invoices made since the redemption.
ALTER TABLE subscriptions ADD COLUMN coupon_id UUID;
ALTER TABLE subscriptions ADD COLUMN coupon_redeemed_at TIMESTAMPTZ;
ALTER TABLE subscriptions ADD COLUMN coupon_invoices INTEGER NOT NULL DEFAULT 0;
