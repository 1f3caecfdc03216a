-- An event's data is written once and only ever read back whole (the API, webhook deliveries):
-- kept as the JSON text it was written as, which PostgreSQL checks but does not convert, it
-- costs about half as much to write as jsonb and takes less room. The column is replaced rather
-- than converted, which would rewrite the table under a lock that stops every event write:
-- events recorded before keep their jsonb copy (`data_jsonb`) until the retention purge removes
-- them, and reads take whichever of the two the event has.
SET LOCAL lock_timeout = '10s';

ALTER TABLE events RENAME COLUMN data TO data_jsonb;
ALTER TABLE events ALTER COLUMN data_jsonb DROP NOT NULL;
ALTER TABLE events ADD COLUMN data JSON;
-- Not checked against the events already there (they all have their jsonb copy): that would
-- read the whole table under the lock.
ALTER TABLE events ADD CONSTRAINT events_data_check
    CHECK (data IS NOT NULL OR data_jsonb IS NOT NULL) NOT VALID;
