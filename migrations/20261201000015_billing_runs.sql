-- Scheduled billing runs. Billing work due later (renewals at a period's end, trial notices,
-- dunning retries, expiries) waits as `scheduled` jobs; each tick of the fleet's schedule makes
-- one billing run (unique per scope and tick), which moves the jobs due by its time to
-- `pending` in batches for the relays to hand to the workers.
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('scheduled', 'pending', 'succeeded', 'dead'));
ALTER TABLE jobs ADD COLUMN billing_run_id UUID;
CREATE INDEX jobs_scheduled_idx ON jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX jobs_billing_run_idx ON jobs (billing_run_id, state)
    WHERE billing_run_id IS NOT NULL;

CREATE TABLE billing_runs (
    id            UUID PRIMARY KEY,
    -- `fleet` (every tenant), or `tenant:<id>` (one tenant's two modes, on request)
    scope         TEXT NOT NULL,
    tenant_id     UUID REFERENCES tenants (id) ON DELETE CASCADE,
    scheduled_for TIMESTAMPTZ NOT NULL,
    trigger       TEXT NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    status        TEXT NOT NULL CHECK (status IN ('running', 'enqueued', 'completed')),
    -- ticks before this one that no run was made for (the fleet was down): this run covers them
    missed_ticks  INTEGER NOT NULL DEFAULT 0,
    owner         TEXT NOT NULL,
    lease_until   TIMESTAMPTZ NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    enqueued_at   TIMESTAMPTZ,
    completed_at  TIMESTAMPTZ,
    CONSTRAINT billing_runs_scope_tick_key UNIQUE (scope, scheduled_for)
);
CREATE INDEX billing_runs_open_idx ON billing_runs (status) WHERE status <> 'completed';

-- What a run found and did for each tenant and mode: jobs due by its time, moved to the
-- queue so far, and once it is completed, how many succeeded and how many failed (dead).
CREATE TABLE billing_run_tenants (
    run_id    UUID NOT NULL REFERENCES billing_runs (id) ON DELETE CASCADE,
    tenant_id UUID NOT NULL,
    livemode  BOOLEAN NOT NULL,
    due       BIGINT NOT NULL DEFAULT 0,
    enqueued  BIGINT NOT NULL DEFAULT 0,
    succeeded BIGINT,
    failed    BIGINT,
    PRIMARY KEY (run_id, tenant_id, livemode)
);
CREATE INDEX billing_run_tenants_tenant_idx ON billing_run_tenants (tenant_id, livemode, run_id);

-- Renewals-queue jobs already waiting for a later time become scheduled.
UPDATE jobs SET state = 'scheduled'
WHERE queue = 'renewals' AND state = 'pending' AND run_at > now() AND lease_token IS NULL
  AND test_clock_id IS NULL AND attempts = 0;
