-- What Stripe says about payments afterwards: a payment intent that succeeds after 3-D Secure
-- (or fails), a refund that settles or fails, a dispute. Events are matched to payments and
-- refunds by the gateway's id (or the payment id the platform put in the intent's metadata).
ALTER TABLE payments ADD COLUMN dispute_status TEXT;
ALTER TABLE payments ADD COLUMN disputed_amount BIGINT NOT NULL DEFAULT 0 CHECK (disputed_amount >= 0);
CREATE INDEX payments_gateway_id_idx ON payments (gateway_id) WHERE gateway_id IS NOT NULL;
CREATE INDEX refunds_gateway_id_idx ON refunds (gateway_id) WHERE gateway_id IS NOT NULL;

-- Event types stored as ignored before the platform acted on them are processed again once:
-- one row per type prefix, written by the first worker that requeues them.
CREATE TABLE stripe_event_reprocessing (
    type_prefix  TEXT PRIMARY KEY,
    requeued     BIGINT NOT NULL,
    done_at      TIMESTAMPTZ NOT NULL
);
