-- A subscription's items, current or removed: usage billing reads the items removed since its
-- invoiced usage ends as well as the current ones (`deleted_at IS NULL OR deleted_at > …`),
-- which the index of current items alone cannot answer (every such read scanned the table).
CREATE INDEX subscription_items_subscription_all_idx
    ON subscription_items (subscription_id, deleted_at);
DROP INDEX subscription_items_subscription_idx;
