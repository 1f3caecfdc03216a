-- Foundation: tenants, users, API keys, refresh tokens, audit log, idempotency keys.

CREATE TABLE tenants (
    id                        UUID PRIMARY KEY,
    company_name              TEXT NOT NULL,
    slug                      TEXT NOT NULL,
    email                     TEXT NOT NULL,
    domain                    TEXT,
    -- Platform fee in basis points: 1500 = 15.00 %.
    platform_fee_bps          INTEGER NOT NULL DEFAULT 1500
                              CHECK (platform_fee_bps BETWEEN 0 AND 10000),
    branding                  JSONB NOT NULL DEFAULT '{}'::jsonb,
    is_active                 BOOLEAN NOT NULL DEFAULT TRUE,
    subscription_tier         TEXT NOT NULL DEFAULT 'free'
                              CHECK (subscription_tier IN ('free', 'pro', 'enterprise')),
    stripe_connect_account_id TEXT,
    stripe_connect_status     TEXT NOT NULL DEFAULT 'not_connected',
    -- Encrypted (XChaCha20-Poly1305) tenant-level webhook signing secret.
    webhook_secret_enc        BYTEA NOT NULL,
    webhook_secret_last4      TEXT NOT NULL,
    created_at                TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT tenants_slug_key UNIQUE (slug)
);

CREATE TABLE users (
    id               UUID PRIMARY KEY,
    tenant_id        UUID NOT NULL REFERENCES tenants (id),
    email            TEXT NOT NULL,
    password_hash    TEXT NOT NULL,
    first_name       TEXT NOT NULL DEFAULT '',
    last_name        TEXT NOT NULL DEFAULT '',
    role             TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'developer', 'billing')),
    is_active        BOOLEAN NOT NULL DEFAULT TRUE,
    -- Bumped on every password change: tokens carrying an older version stop working.
    password_version INTEGER NOT NULL DEFAULT 1,
    last_login_at    TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Login is by email alone, so an email belongs to one user platform-wide.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE INDEX users_tenant_idx ON users (tenant_id, id);

CREATE TABLE api_keys (
    id          UUID PRIMARY KEY,
    tenant_id   UUID NOT NULL REFERENCES tenants (id),
    livemode    BOOLEAN NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('secret', 'publishable')),
    -- SHA-256 of the whole key; the key itself is never stored.
    key_hash    BYTEA NOT NULL,
    prefix      TEXT NOT NULL,
    last4       TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ,
    revoked_by  TEXT,
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);
-- At most one active key of each kind per tenant and mode.
CREATE UNIQUE INDEX api_keys_one_active ON api_keys (tenant_id, livemode, kind)
    WHERE revoked_at IS NULL;

CREATE TABLE refresh_tokens (
    jti        UUID PRIMARY KEY,
    family     UUID NOT NULL,
    user_id    UUID NOT NULL REFERENCES users (id),
    tenant_id  UUID NOT NULL REFERENCES tenants (id),
    issued_at  TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family);

CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   UUID NOT NULL,
    livemode    BOOLEAN NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    object_id   TEXT,
    request_id  TEXT NOT NULL,
    client_addr TEXT,
    outcome     SMALLINT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_tenant_idx ON audit_log (tenant_id, id DESC);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TABLE idempotency_keys (
    tenant_id     UUID NOT NULL,
    livemode      BOOLEAN NOT NULL,
    key           TEXT NOT NULL,
    request_hash  BYTEA NOT NULL,
    status        SMALLINT,
    content_type  TEXT,
    response_body BYTEA,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at  TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, livemode, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
