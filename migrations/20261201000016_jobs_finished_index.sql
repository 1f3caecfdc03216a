-- The index of ended jobs (purges, dead-job listings) leaves out the scheduled ones too.
DROP INDEX IF EXISTS jobs_finished_idx;
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE state IN ('succeeded', 'dead');
