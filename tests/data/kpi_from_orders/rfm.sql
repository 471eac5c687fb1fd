-- Reference for tests/integration/kpi.rs: the shipped query of the same name as
-- it was before the daily aggregates, reading shop.orders and
-- shop.order_items. The report must give the same numbers either way.
-- RFM segments at the end of the period (shop.rfm_at, in
-- sql/schema/warehouse.sql, defines the scores and the segment grid):
-- customers, their paid revenue over the 12 months, and their averages.
SELECT segment, count(*) AS customers, sum(monetary) AS revenue,
       round(avg(recency_days)) AS avg_recency_days, round(avg(frequency), 1) AS avg_orders,
       round(avg(monetary)) AS avg_revenue
FROM (
        WITH c AS (
            SELECT o.user_id,
                   floor(extract(epoch FROM $2::timestamp - max(o.ordered_at)) / 86400)::int AS recency_days,
                   count(*) AS frequency,
                   sum(o.total_amount) AS monetary
            FROM shop.orders o
            WHERE o.status = 'paid' AND o.ordered_at >= $2::timestamp - interval '365 days' AND o.ordered_at < $2::timestamp
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
               ])[s.r][floor((s.f + s.m) / 2.0 + 0.5)::int] AS segment
        FROM s
) rfm
GROUP BY segment
ORDER BY revenue DESC, segment
