-- Test clocks: a frozen time for test-mode customers that a tenant moves forward by hand.
-- Jobs about a clock's customers carry the clock and are never relayed by real time: an
-- advance runs them, in due order, at the clock's time.

CREATE TABLE test_clocks (
    id            UUID PRIMARY KEY,
    tenant_id     UUID NOT NULL REFERENCES tenants (id),
    livemode      BOOLEAN NOT NULL CHECK (NOT livemode),
    name          TEXT NOT NULL,
    frozen_time   TIMESTAMPTZ NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('ready', 'advancing')),
    -- Where an advance under way goes.
    advancing_to  TIMESTAMPTZ CHECK ((status = 'advancing') = (advancing_to IS NOT NULL)),
    deleted_at    TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    CONSTRAINT test_clocks_tenant_key UNIQUE (tenant_id, livemode, id)
);
CREATE INDEX test_clocks_tenant_idx ON test_clocks (tenant_id, livemode, id DESC)
    WHERE deleted_at IS NULL;

ALTER TABLE customers ADD COLUMN test_clock_id UUID;
ALTER TABLE customers ADD CONSTRAINT customers_test_clock_fkey
    FOREIGN KEY (tenant_id, livemode, test_clock_id) REFERENCES test_clocks (tenant_id, livemode, id);
CREATE INDEX customers_test_clock_idx ON customers (test_clock_id) WHERE test_clock_id IS NOT NULL;

-- Copied from the customer (whose clock never changes), so jobs about it are tagged without a
-- lookup.
ALTER TABLE subscriptions ADD COLUMN test_clock_id UUID;

ALTER TABLE jobs ADD COLUMN test_clock_id UUID;
DROP INDEX jobs_due_idx;
CREATE INDEX jobs_due_idx ON jobs (queue, run_at) WHERE state = 'pending' AND test_clock_id IS NULL;
CREATE INDEX jobs_test_clock_idx ON jobs (test_clock_id, run_at, id)
    WHERE state = 'pending' AND test_clock_id IS NOT NULL;
