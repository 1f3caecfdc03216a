-- Every metered price stores its metric's aggregation (for a metric that prices named with
-- different aggregations before metrics existed, the metric took the first price's).
UPDATE prices p SET usage = jsonb_build_object('metric', m.code, 'aggregation', m.aggregation)
  FROM billable_metrics m
 WHERE p.usage IS NOT NULL AND m.tenant_id = p.tenant_id AND m.livemode = p.livemode
   AND m.code = p.usage->>'metric'
   AND p.usage->>'aggregation' IS DISTINCT FROM m.aggregation;
