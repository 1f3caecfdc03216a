-- The (tenant_id, livemode, id) unique keys that child foreign keys reference also serve the
-- tenant listings (newest first is a backward scan): the older (tenant_id, livemode, id DESC)
-- indexes only cost every insert.
DROP INDEX products_tenant_idx;
DROP INDEX prices_tenant_idx;
DROP INDEX plans_tenant_idx;
DROP INDEX bundles_tenant_idx;
DROP INDEX webhook_endpoints_tenant_idx;
