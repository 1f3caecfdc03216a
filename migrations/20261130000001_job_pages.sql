-- Room on each page for the updated versions of its rows. Claiming a job and recording a
-- delivery's outcome change no indexed column, so PostgreSQL can keep the new version on the
-- same page (a HOT update) and leave the indexes alone, when the page has room for it.
ALTER TABLE jobs SET (fillfactor = 70);
ALTER TABLE webhook_deliveries SET (fillfactor = 70);
