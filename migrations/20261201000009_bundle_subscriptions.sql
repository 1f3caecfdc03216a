-- A subscription made from a bundle bills the bundle's prices with its discount, as it was when
-- the subscription was made (a later change of the bundle changes no subscription).
ALTER TABLE subscriptions ADD COLUMN bundle_id UUID;
ALTER TABLE subscriptions ADD COLUMN bundle_discount_bps INTEGER NOT NULL DEFAULT 0
    CHECK (bundle_discount_bps BETWEEN 0 AND 10000);
