-- Idempotency keys belong to the credential that sent them (an API key or a user), and stored
-- responses are encrypted: they may carry secrets shown only once.
--
-- Keys stored before this change keep `actor = ''`: nobody can replay them any more, their
-- responses (stored in the clear) are erased, and a request reusing one of them within its
-- 24 hours is refused rather than run a second time. `response_body` stays, always empty,
-- for replicas still running the previous version during a rolling deploy.
LOCK TABLE idempotency_keys IN ACCESS EXCLUSIVE MODE;
UPDATE idempotency_keys SET response_body = NULL;
ALTER TABLE idempotency_keys ADD COLUMN actor TEXT NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys ADD COLUMN response_enc BYTEA;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (tenant_id, livemode, actor, key);
