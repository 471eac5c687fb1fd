-- Reference for tests/integration/kpi.rs: shop.rfm_at as it was before the
-- daily aggregates, reading shop.orders. The reference RFM and lifetime
-- value queries (kpi_from_orders/) call it; the test creates it.
CREATE OR REPLACE FUNCTION shop.rfm_at_from_orders(at timestamp)
RETURNS TABLE (user_id bigint, recency_days int, frequency bigint, monetary numeric, r int, f int, m int, segment text)
LANGUAGE sql STABLE AS $$
    WITH c AS (
        SELECT o.user_id,
               floor(extract(epoch FROM at - max(o.ordered_at)) / 86400)::int AS recency_days,
               count(*) AS frequency,
               sum(o.total_amount) AS monetary
        FROM shop.orders o
        WHERE o.status = 'paid' AND o.ordered_at >= at - interval '365 days' AND o.ordered_at < at
        GROUP BY o.user_id
    ),
    s AS (
        SELECT c.*,
               least(5, 1 + 5 * (rank() OVER (ORDER BY c.recency_days DESC) - 1) / greatest(count(*) OVER () - 1, 1))::int AS r,
               least(5, 1 + 5 * (rank() OVER (ORDER BY c.frequency) - 1) / greatest(count(*) OVER () - 1, 1))::int AS f,
               least(5, 1 + 5 * (rank() OVER (ORDER BY c.monetary) - 1) / greatest(count(*) OVER () - 1, 1))::int AS m
        FROM c
    )
    SELECT s.user_id, s.recency_days, s.frequency, s.monetary, s.r, s.f, s.m,
           (ARRAY[
               ARRAY['Lost', 'Lost', 'At Risk', 'Can''t Lose Them', 'Can''t Lose Them'],
               ARRAY['Hibernating', 'Hibernating', 'At Risk', 'At Risk', 'At Risk'],
               ARRAY['About to Sleep', 'Need Attention', 'Loyal', 'Loyal', 'Loyal'],
               ARRAY['Promising', 'Potential Loyalists', 'Loyal', 'Champions', 'Champions'],
               ARRAY['New Customers', 'Potential Loyalists', 'Potential Loyalists', 'Champions', 'Champions']
           ])[s.r][floor((s.f + s.m) / 2.0 + 0.5)::int]
    FROM s
$$;
