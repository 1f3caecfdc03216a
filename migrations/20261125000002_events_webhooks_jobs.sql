-- Events, webhook endpoints and deliveries, and the job outbox relayed to the Redis queues.

-- Every state change, per tenant and mode; kept for the retention period (30 days by default).
CREATE TABLE events (
    id          UUID PRIMARY KEY,
    tenant_id   UUID NOT NULL REFERENCES tenants (id),
    livemode    BOOLEAN NOT NULL,
    type        TEXT NOT NULL,
    -- The object the event is about (`{"object": {...}}`), as delivered to webhooks.
    data        JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX events_tenant_idx ON events (tenant_id, livemode, id DESC);
CREATE INDEX events_type_idx ON events (tenant_id, livemode, type, id DESC);
CREATE INDEX events_created_idx ON events (created_at);

CREATE TABLE webhook_endpoints (
    id                          UUID PRIMARY KEY,
    tenant_id                   UUID NOT NULL REFERENCES tenants (id),
    livemode                    BOOLEAN NOT NULL,
    url                         TEXT NOT NULL,
    description                 TEXT NOT NULL DEFAULT '',
    enabled                     BOOLEAN NOT NULL DEFAULT TRUE,
    -- `{*}` for every event type, or the types wanted.
    event_types                 TEXT[] NOT NULL DEFAULT '{*}',
    -- Encrypted `whsec_…` signing secret, and the one it replaced while it still signs.
    secret_enc                  BYTEA NOT NULL,
    secret_last4                TEXT NOT NULL,
    previous_secret_enc         BYTEA,
    previous_secret_expires_at  TIMESTAMPTZ,
    -- The endpoint set through the seed path `/api/v1/auth/tenants/webhooks/config/`.
    is_default                  BOOLEAN NOT NULL DEFAULT FALSE,
    -- Start of the current run of failed attempts (NULL after a success).
    failing_since               TIMESTAMPTZ,
    disabled_reason             TEXT,
    created_at                  TIMESTAMPTZ NOT NULL,
    updated_at                  TIMESTAMPTZ NOT NULL
);
CREATE INDEX webhook_endpoints_tenant_idx ON webhook_endpoints (tenant_id, livemode, id DESC);
CREATE UNIQUE INDEX webhook_endpoints_one_default
    ON webhook_endpoints (tenant_id, livemode) WHERE is_default;

-- One delivery per (event, endpoint); its id is the `webhook-id` on every attempt.
CREATE TABLE webhook_deliveries (
    id               UUID PRIMARY KEY,
    tenant_id        UUID NOT NULL,
    livemode         BOOLEAN NOT NULL,
    event_id         UUID NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    endpoint_id      UUID NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ,
    last_attempt_at  TIMESTAMPTZ,
    last_status_code SMALLINT,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    CONSTRAINT webhook_deliveries_event_endpoint_key UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, id DESC);

CREATE TABLE webhook_attempts (
    id            BIGSERIAL PRIMARY KEY,
    delivery_id   UUID NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt       INTEGER NOT NULL,
    attempted_at  TIMESTAMPTZ NOT NULL,
    status_code   SMALLINT,
    latency_ms    INTEGER NOT NULL,
    -- The first 4 KiB of the response body.
    response_body TEXT NOT NULL DEFAULT '',
    error         TEXT,
    CONSTRAINT webhook_attempts_delivery_attempt_key UNIQUE (delivery_id, attempt)
);

-- The outbox: work that must happen, written in the transaction of the change causing it.
-- `run_at` is when it is due; the relay leases due jobs (moving `run_at` forward and setting a
-- fresh `lease_token`) and pushes them to the Redis queue; a lease that runs out makes the
-- job due again, so nothing is lost when Redis or a worker is.
CREATE TABLE jobs (
    id           UUID PRIMARY KEY,
    queue        TEXT NOT NULL
                 CHECK (queue IN ('webhooks', 'stripe_sync', 'renewals', 'dunning', 'analytics')),
    kind         TEXT NOT NULL,
    tenant_id    UUID,
    livemode     BOOLEAN,
    payload      JSONB NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'succeeded', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at       TIMESTAMPTZ NOT NULL,
    lease_token  UUID,
    last_error   TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    finished_at  TIMESTAMPTZ
);
CREATE INDEX jobs_due_idx ON jobs (queue, run_at) WHERE state = 'pending';
CREATE INDEX jobs_dead_idx ON jobs (queue, id DESC) WHERE state = 'dead';
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE state <> 'pending';
