-- The catalog (plans, products, prices, bundles), Stripe Connect accounts, and incoming Stripe
-- events.

-- The tenant's connected Stripe account, per mode (test-mode and live-mode accounts differ).
CREATE TABLE stripe_accounts (
    tenant_id          UUID NOT NULL REFERENCES tenants (id),
    livemode           BOOLEAN NOT NULL,
    account_id         TEXT,
    status             TEXT NOT NULL DEFAULT 'not_connected'
                       CHECK (status IN ('not_connected', 'onboarding', 'connected', 'disconnected')),
    charges_enabled    BOOLEAN NOT NULL DEFAULT FALSE,
    payouts_enabled    BOOLEAN NOT NULL DEFAULT FALSE,
    details_submitted  BOOLEAN NOT NULL DEFAULT FALSE,
    requirements       JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- When Stripe last described the account (an `account.updated` older than this is stale).
    stripe_seen_at     TIMESTAMPTZ,
    connected_at       TIMESTAMPTZ,
    updated_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, livemode)
);
CREATE UNIQUE INDEX stripe_accounts_account_key ON stripe_accounts (account_id, livemode)
    WHERE account_id IS NOT NULL;

-- Single-use `state` values of Connect onboarding links.
CREATE TABLE connect_states (
    nonce      UUID PRIMARY KEY,
    tenant_id  UUID NOT NULL REFERENCES tenants (id),
    livemode   BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);

-- Plans as the seed has them: a product with one recurring flat price.
CREATE TABLE plans (
    id                UUID PRIMARY KEY,
    tenant_id         UUID NOT NULL REFERENCES tenants (id),
    livemode          BOOLEAN NOT NULL,
    name              TEXT NOT NULL,
    description       TEXT NOT NULL DEFAULT '',
    amount            BIGINT NOT NULL CHECK (amount >= 0),
    currency          TEXT NOT NULL,
    interval          TEXT NOT NULL CHECK (interval IN ('day', 'week', 'month', 'quarter', 'year')),
    interval_count    INTEGER NOT NULL CHECK (interval_count >= 1),
    trial_days        INTEGER NOT NULL DEFAULT 0 CHECK (trial_days BETWEEN 0 AND 730),
    features          JSONB NOT NULL DEFAULT '[]'::jsonb,
    metadata          JSONB NOT NULL DEFAULT '{}'::jsonb,
    is_active         BOOLEAN NOT NULL DEFAULT TRUE,
    is_visible        BOOLEAN NOT NULL DEFAULT TRUE,
    duplicated_from   UUID REFERENCES plans (id),
    stripe_product_id TEXT,
    stripe_price_id   TEXT,
    sync_status       TEXT NOT NULL DEFAULT 'pending'
                      CHECK (sync_status IN ('pending', 'synced', 'failed', 'not_synced')),
    sync_error        TEXT,
    -- Bumped by every change Stripe must hear about; the sync records the version it pushed.
    sync_version      INTEGER NOT NULL DEFAULT 1,
    synced_version    INTEGER NOT NULL DEFAULT 0,
    synced_at         TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX plans_name_key ON plans (tenant_id, livemode, lower(name));
CREATE INDEX plans_tenant_idx ON plans (tenant_id, livemode, id DESC);
CREATE INDEX plans_stripe_product_idx ON plans (stripe_product_id) WHERE stripe_product_id IS NOT NULL;

CREATE TABLE products (
    id                UUID PRIMARY KEY,
    tenant_id         UUID NOT NULL REFERENCES tenants (id),
    livemode          BOOLEAN NOT NULL,
    name              TEXT NOT NULL,
    -- A short stable handle (`autoflow`), unique per tenant and mode.
    code              TEXT,
    description       TEXT NOT NULL DEFAULT '',
    features          JSONB NOT NULL DEFAULT '[]'::jsonb,
    metadata          JSONB NOT NULL DEFAULT '{}'::jsonb,
    active            BOOLEAN NOT NULL DEFAULT TRUE,
    stripe_product_id TEXT,
    sync_status       TEXT NOT NULL DEFAULT 'pending'
                      CHECK (sync_status IN ('pending', 'synced', 'failed', 'not_synced')),
    sync_error        TEXT,
    sync_version      INTEGER NOT NULL DEFAULT 1,
    synced_version    INTEGER NOT NULL DEFAULT 0,
    synced_at         TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX products_code_key ON products (tenant_id, livemode, code) WHERE code IS NOT NULL;
CREATE INDEX products_tenant_idx ON products (tenant_id, livemode, id DESC);

-- A product's prices (its plans or tiers): a pricing model, immutable once created.
CREATE TABLE prices (
    id                UUID PRIMARY KEY,
    tenant_id         UUID NOT NULL,
    livemode          BOOLEAN NOT NULL,
    product_id        UUID NOT NULL REFERENCES products (id),
    nickname          TEXT NOT NULL DEFAULT '',
    currency          TEXT NOT NULL,
    -- NULL for a one-time price.
    interval          TEXT CHECK (interval IN ('day', 'week', 'month', 'quarter', 'year')),
    interval_count    INTEGER CHECK (interval_count >= 1),
    model             JSONB NOT NULL,
    usage             JSONB,
    active            BOOLEAN NOT NULL DEFAULT TRUE,
    metadata          JSONB NOT NULL DEFAULT '{}'::jsonb,
    stripe_price_id   TEXT,
    sync_status       TEXT NOT NULL DEFAULT 'pending'
                      CHECK (sync_status IN ('pending', 'synced', 'failed', 'not_synced')),
    sync_error        TEXT,
    sync_version      INTEGER NOT NULL DEFAULT 1,
    synced_version    INTEGER NOT NULL DEFAULT 0,
    synced_at         TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX prices_product_idx ON prices (product_id, id DESC);
CREATE INDEX prices_tenant_idx ON prices (tenant_id, livemode, id DESC);

CREATE TABLE bundles (
    id             UUID PRIMARY KEY,
    tenant_id      UUID NOT NULL REFERENCES tenants (id),
    livemode       BOOLEAN NOT NULL,
    name           TEXT NOT NULL,
    description    TEXT NOT NULL DEFAULT '',
    -- Discount on the members' list price, in basis points (1000 = 10 %).
    discount_bps   INTEGER NOT NULL CHECK (discount_bps BETWEEN 0 AND 10000),
    currency       TEXT NOT NULL,
    interval       TEXT CHECK (interval IN ('day', 'week', 'month', 'quarter', 'year')),
    interval_count INTEGER CHECK (interval_count >= 1),
    active         BOOLEAN NOT NULL DEFAULT TRUE,
    featured       BOOLEAN NOT NULL DEFAULT FALSE,
    metadata       JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX bundles_name_key ON bundles (tenant_id, livemode, lower(name));
CREATE INDEX bundles_tenant_idx ON bundles (tenant_id, livemode, id DESC);

CREATE TABLE bundle_items (
    bundle_id UUID NOT NULL REFERENCES bundles (id) ON DELETE CASCADE,
    price_id  UUID NOT NULL REFERENCES prices (id),
    quantity  INTEGER NOT NULL DEFAULT 1 CHECK (quantity >= 1),
    position  INTEGER NOT NULL,
    PRIMARY KEY (bundle_id, price_id)
);

-- Events received from Stripe, stored once per Stripe event id before anything else happens.
CREATE TABLE stripe_events (
    id           TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    account      TEXT,
    livemode     BOOLEAN NOT NULL,
    created      TIMESTAMPTZ NOT NULL,
    payload      JSONB NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL,
    processed_at TIMESTAMPTZ,
    -- What processing did: `applied`, `stale`, `ignored: …`.
    outcome      TEXT
);
CREATE INDEX stripe_events_received_idx ON stripe_events (received_at);
