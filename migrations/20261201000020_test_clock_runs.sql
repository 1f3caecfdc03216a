-- A test clock's advance is a billing run of its own, scoped to the clock (`test_clock:<id>`,
-- for the advance's target time): what came due on the clock, what ran and how it ended, as
-- the fleet's runs show it. The advance carries it out; the fleet's schedule leaves it alone.
ALTER TABLE billing_runs DROP CONSTRAINT IF EXISTS billing_runs_trigger_check;
ALTER TABLE billing_runs ADD CONSTRAINT billing_runs_trigger_check
    CHECK (trigger IN ('schedule', 'manual', 'test_clock'));
