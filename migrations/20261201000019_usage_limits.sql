-- Usage limits: a plan declares how much of a metric a subscription to it may use per period,
-- and the first time a subscription's usage in a period reaches a limit is recorded once (with
-- the event that tells of it).

-- A list of {"metric": code, "limit": quantity}, one per metric, each quantity at least 1.
ALTER TABLE products ADD COLUMN usage_limits JSONB NOT NULL DEFAULT '[]'::jsonb
    CHECK (jsonb_typeof(usage_limits) = 'array');

-- The plans view shows them (a column added at its end, as a view may grow).
CREATE OR REPLACE VIEW plans AS
    SELECT p.id, p.tenant_id, p.livemode, p.name, p.description,
        (pr.model ->> 'amount')::bigint AS amount, pr.currency, pr.interval, pr.interval_count,
        pr.trial_days, p.features, p.metadata, p.active AS is_active, p.visible AS is_visible,
        p.duplicated_from, pr.id AS price_id, p.stripe_product_id, pr.stripe_price_id,
        CASE WHEN 'failed' IN (p.sync_status, pr.sync_status) THEN 'failed'
             WHEN 'pending' IN (p.sync_status, pr.sync_status) THEN 'pending'
             WHEN 'not_synced' IN (p.sync_status, pr.sync_status) THEN 'not_synced'
             ELSE 'synced' END AS sync_status,
        COALESCE(p.sync_error, pr.sync_error) AS sync_error,
        p.sync_version AS product_version, pr.sync_version AS price_version,
        CASE WHEN p.synced_at IS NULL OR pr.synced_at IS NULL THEN NULL
             ELSE GREATEST(p.synced_at, pr.synced_at) END AS synced_at,
        p.created_at, GREATEST(p.updated_at, pr.updated_at) AS updated_at,
        p.usage_limits
    FROM products p JOIN prices pr ON pr.product_id = p.id AND pr.plan
    WHERE p.plan;

-- One row per (subscription, metric, period, limit) whose usage reached the limit: the key makes
-- the event that tells of it happen once, however many checks run. A limit raised in the period
-- (an upgrade) and reached again is told again; one lowered below a limit reached is not.
CREATE TABLE usage_limit_crossings (
    tenant_id       UUID NOT NULL,
    livemode        BOOLEAN NOT NULL,
    subscription_id UUID NOT NULL,
    metric_id       UUID NOT NULL,
    period_start    TIMESTAMPTZ NOT NULL,
    usage_limit     BIGINT NOT NULL,
    quantity        NUMERIC NOT NULL,
    crossed_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (subscription_id, metric_id, period_start, usage_limit),
    FOREIGN KEY (tenant_id, livemode, subscription_id)
        REFERENCES subscriptions (tenant_id, livemode, id) ON DELETE CASCADE,
    FOREIGN KEY (metric_id) REFERENCES billable_metrics (id) ON DELETE CASCADE
);
