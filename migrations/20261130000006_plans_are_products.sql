-- A seed plan is a product with one recurring flat price, as Stripe's Plans became Prices.
--
-- The plan's id is its product's id (`plan_…` and `prod_…` name the same row), and its price is
-- the one price of that product marked `plan` (trial days live on it, as Stripe's
-- `recurring.trial_period_days` did). One Stripe sync path (products, then prices) serves both:
-- a plan's product job brings its plan price along.
-- `plans` becomes a read-only view joining the two.

ALTER TABLE products
    ADD COLUMN plan            BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN visible         BOOLEAN NOT NULL DEFAULT TRUE,
    ADD COLUMN duplicated_from UUID,
    ADD CONSTRAINT products_duplicated_from_fkey FOREIGN KEY (tenant_id, livemode, duplicated_from)
        REFERENCES products (tenant_id, livemode, id);
-- Plan names are unique per tenant and mode, whatever the case, as they were.
CREATE UNIQUE INDEX products_plan_name_key ON products (tenant_id, livemode, lower(name)) WHERE plan;

ALTER TABLE prices
    ADD COLUMN plan       BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN trial_days INTEGER NOT NULL DEFAULT 0 CHECK (trial_days BETWEEN 0 AND 730);
-- One plan price per product.
CREATE UNIQUE INDEX prices_plan_key ON prices (product_id) WHERE plan;

INSERT INTO products (id, tenant_id, livemode, name, description, features, metadata, active,
        stripe_product_id, sync_status, sync_error, sync_version, synced_version, synced_at,
        created_at, updated_at, plan, visible, duplicated_from)
    SELECT id, tenant_id, livemode, name, description, features, metadata, is_active,
        stripe_product_id, sync_status, sync_error, sync_version, synced_version, synced_at, created_at, updated_at,
        TRUE, is_visible, duplicated_from
    FROM plans;

-- The price's id keeps the plan id's time (its first 48 bits) so prices stay in creation order.
INSERT INTO prices (id, tenant_id, livemode, product_id, nickname, currency, interval,
        interval_count, model, usage, active, metadata, stripe_price_id, sync_status, sync_error,
        sync_version, synced_version, synced_at, created_at, updated_at, plan, trial_days)
    SELECT (substr(id::text, 1, 15) || substr(gen_random_uuid()::text, 16))::uuid,
        tenant_id, livemode, id, name, currency, interval, interval_count,
        jsonb_build_object('type', 'flat', 'amount', amount), NULL, is_active, '{}'::jsonb,
        stripe_price_id, sync_status, sync_error, sync_version, synced_version, synced_at, created_at, updated_at,
        TRUE, trial_days
    FROM plans;

-- A plan's sync job becomes its product's, which brings the plan price along.
UPDATE jobs SET kind = 'stripe.sync_product' WHERE kind = 'stripe.sync_plan';

DROP TABLE plans;

CREATE VIEW plans AS
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
        p.created_at, GREATEST(p.updated_at, pr.updated_at) AS updated_at
    FROM products p JOIN prices pr ON pr.product_id = p.id AND pr.plan
    WHERE p.plan;
