-- Tenancy in the database itself: every tenant-owned child row carries its tenant and mode, and
-- references its parent by (tenant_id, livemode, id), so a row can never point at another
-- tenant's (or the other mode's) parent, whatever the code does.

-- Parents: (tenant_id, livemode, id) is unique (id alone already is).
ALTER TABLE products ADD CONSTRAINT products_tenant_key UNIQUE (tenant_id, livemode, id);
ALTER TABLE prices ADD CONSTRAINT prices_tenant_key UNIQUE (tenant_id, livemode, id);
ALTER TABLE plans ADD CONSTRAINT plans_tenant_key UNIQUE (tenant_id, livemode, id);
ALTER TABLE bundles ADD CONSTRAINT bundles_tenant_key UNIQUE (tenant_id, livemode, id);
ALTER TABLE webhook_endpoints ADD CONSTRAINT webhook_endpoints_tenant_key
    UNIQUE (tenant_id, livemode, id);
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_tenant_key
    UNIQUE (tenant_id, livemode, id);
-- Events are listed by (tenant_id, livemode, id DESC); one unique index serves both.
DROP INDEX events_tenant_idx;
ALTER TABLE events ADD CONSTRAINT events_tenant_key UNIQUE (tenant_id, livemode, id);

-- Prices belong to a product of the same tenant and mode.
ALTER TABLE prices DROP CONSTRAINT prices_product_id_fkey,
    ADD CONSTRAINT prices_product_fkey FOREIGN KEY (tenant_id, livemode, product_id)
        REFERENCES products (tenant_id, livemode, id);

-- A duplicated plan remembers an original of the same tenant and mode.
ALTER TABLE plans DROP CONSTRAINT plans_duplicated_from_fkey,
    ADD CONSTRAINT plans_duplicated_from_fkey FOREIGN KEY (tenant_id, livemode, duplicated_from)
        REFERENCES plans (tenant_id, livemode, id);

-- Bundle members: the bundle's tenant and mode, for the bundle and for the price.
ALTER TABLE bundle_items ADD COLUMN tenant_id UUID, ADD COLUMN livemode BOOLEAN;
UPDATE bundle_items i SET tenant_id = b.tenant_id, livemode = b.livemode
    FROM bundles b WHERE b.id = i.bundle_id;
ALTER TABLE bundle_items ALTER COLUMN tenant_id SET NOT NULL,
    ALTER COLUMN livemode SET NOT NULL,
    DROP CONSTRAINT bundle_items_bundle_id_fkey,
    DROP CONSTRAINT bundle_items_price_id_fkey,
    ADD CONSTRAINT bundle_items_bundle_fkey FOREIGN KEY (tenant_id, livemode, bundle_id)
        REFERENCES bundles (tenant_id, livemode, id) ON DELETE CASCADE,
    ADD CONSTRAINT bundle_items_price_fkey FOREIGN KEY (tenant_id, livemode, price_id)
        REFERENCES prices (tenant_id, livemode, id);

-- Deliveries: an event and an endpoint of the delivery's tenant and mode.
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_event_id_fkey,
    DROP CONSTRAINT webhook_deliveries_endpoint_id_fkey,
    ADD CONSTRAINT webhook_deliveries_event_fkey FOREIGN KEY (tenant_id, livemode, event_id)
        REFERENCES events (tenant_id, livemode, id) ON DELETE CASCADE,
    ADD CONSTRAINT webhook_deliveries_endpoint_fkey FOREIGN KEY (tenant_id, livemode, endpoint_id)
        REFERENCES webhook_endpoints (tenant_id, livemode, id) ON DELETE CASCADE;

-- Attempts: those of a delivery of the same tenant and mode.
ALTER TABLE webhook_attempts ADD COLUMN tenant_id UUID, ADD COLUMN livemode BOOLEAN;
UPDATE webhook_attempts a SET tenant_id = d.tenant_id, livemode = d.livemode
    FROM webhook_deliveries d WHERE d.id = a.delivery_id;
ALTER TABLE webhook_attempts ALTER COLUMN tenant_id SET NOT NULL,
    ALTER COLUMN livemode SET NOT NULL,
    DROP CONSTRAINT webhook_attempts_delivery_id_fkey,
    ADD CONSTRAINT webhook_attempts_delivery_fkey FOREIGN KEY (tenant_id, livemode, delivery_id)
        REFERENCES webhook_deliveries (tenant_id, livemode, id) ON DELETE CASCADE;
