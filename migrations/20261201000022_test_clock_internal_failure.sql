-- A clock whose advance could not go on (its job died) is `internal_failure`: it stands where
-- the advance got to and keeps where it was going, until a new advance (or an operator retrying
-- the job) goes on from there.
ALTER TABLE test_clocks DROP CONSTRAINT test_clocks_status_check;
ALTER TABLE test_clocks DROP CONSTRAINT test_clocks_check;
ALTER TABLE test_clocks ADD CONSTRAINT test_clocks_status_check
    CHECK (status IN ('ready', 'advancing', 'internal_failure'));
ALTER TABLE test_clocks ADD CONSTRAINT test_clocks_advancing_to_check
    CHECK ((status <> 'ready') = (advancing_to IS NOT NULL));
