-- Coupons: a percentage (basis points) or an amount in one currency off, for the first invoice,
-- a number of months, or forever; redeemable until `redeem_by` and at most `max_redemptions`
-- times. Only the name and metadata change after creation. A deleted coupon answers 404 and can
-- no longer be redeemed; discounts already given keep it.
CREATE TABLE coupons (
    id                 UUID PRIMARY KEY,
    tenant_id          UUID NOT NULL REFERENCES tenants (id),
    livemode           BOOLEAN NOT NULL,
    name               TEXT NOT NULL DEFAULT '',
    percent_off_bps    INTEGER CHECK (percent_off_bps BETWEEN 1 AND 10000),
    amount_off         BIGINT CHECK (amount_off >= 1),
    currency           TEXT,
    duration           TEXT NOT NULL CHECK (duration IN ('once', 'repeating', 'forever')),
    duration_in_months INTEGER CHECK (duration_in_months BETWEEN 1 AND 120),
    max_redemptions    INTEGER CHECK (max_redemptions >= 1),
    redeem_by          TIMESTAMPTZ,
    times_redeemed     INTEGER NOT NULL DEFAULT 0,
    metadata           JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    deleted_at         TIMESTAMPTZ,
    CONSTRAINT coupons_tenant_key UNIQUE (tenant_id, livemode, id),
    CONSTRAINT coupons_one_discount CHECK (
        (percent_off_bps IS NOT NULL AND amount_off IS NULL AND currency IS NULL)
        OR (percent_off_bps IS NULL AND amount_off IS NOT NULL AND currency IS NOT NULL)),
    CONSTRAINT coupons_months_when_repeating CHECK (
        (duration = 'repeating') = (duration_in_months IS NOT NULL))
);
