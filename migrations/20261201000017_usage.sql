-- Usage-based billing: a tenant's billable metrics, the usage events reported against them, and
-- how far each subscription's usage has been invoiced.

-- What a metered price measures: events with this code, combined by `aggregation` over the
-- property `field_name` (none for `count`), counting only events whose properties match
-- `filters` (property → allowed values). Never changes once created, but for its names.
CREATE TABLE billable_metrics (
    id          UUID PRIMARY KEY,
    tenant_id   UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    livemode    BOOLEAN NOT NULL,
    code        TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    aggregation TEXT NOT NULL CHECK (aggregation IN
        ('count', 'sum', 'max', 'unique_count', 'latest', 'weighted_sum')),
    field_name  TEXT,
    filters     JSONB NOT NULL DEFAULT '{}'::jsonb,
    active      BOOLEAN NOT NULL DEFAULT TRUE,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (tenant_id, livemode, code),
    CHECK ((aggregation = 'count') = (field_name IS NULL))
);
CREATE INDEX billable_metrics_list_idx ON billable_metrics (tenant_id, livemode, id);

-- The metrics metered prices already named, so that every metered price names a metric.
INSERT INTO billable_metrics (id, tenant_id, livemode, code, name, aggregation, field_name,
        created_at, updated_at)
SELECT DISTINCT ON (tenant_id, livemode, usage->>'metric')
       gen_random_uuid(), tenant_id, livemode, usage->>'metric', usage->>'metric',
       CASE usage->>'aggregation' WHEN 'last' THEN 'latest' ELSE usage->>'aggregation' END,
       CASE usage->>'aggregation' WHEN 'count' THEN NULL ELSE 'value' END,
       created_at, created_at
  FROM prices WHERE usage IS NOT NULL
 ORDER BY tenant_id, livemode, usage->>'metric', created_at;
UPDATE prices SET usage = jsonb_set(usage, '{aggregation}', '"latest"')
 WHERE usage->>'aggregation' = 'last';

-- One row per (tenant, mode, transaction id), forever: a repeat is a duplicate, never counted
-- twice. What the event counts for was read off its properties when it came in (its metric
-- never changes): whether it matches the metric's filters, the integer value of the metric's
-- property, or the property's value as text for a unique count. The subscription is resolved
-- on the way in; rows are written only by the usage service, which checks what they name.
CREATE TABLE usage_events (
    tenant_id       UUID NOT NULL,
    livemode        BOOLEAN NOT NULL,
    transaction_id  TEXT NOT NULL,
    id              UUID NOT NULL,
    subscription_id UUID NOT NULL,
    customer_id     UUID NOT NULL,
    metric_id       UUID NOT NULL,
    occurred_at     TIMESTAMPTZ NOT NULL,
    properties      JSONB NOT NULL,
    matched         BOOLEAN NOT NULL,
    value           BIGINT,
    unique_key      TEXT,
    received_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, livemode, transaction_id)
);
-- A subscription's usage of a metric over a window.
CREATE INDEX usage_events_window_idx ON usage_events (subscription_id, metric_id, occurred_at);

-- Usage before this instant is on an invoice: events for it are refused. NULL: none yet (the
-- usage window starts at the subscription's start).
ALTER TABLE subscriptions ADD COLUMN usage_billed_until TIMESTAMPTZ;
