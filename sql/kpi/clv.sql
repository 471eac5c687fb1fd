-- One row per customer with a paid order before the end of the period: the
-- purchase history the lifetime value models read (in weeks, purchase
-- occasions counted by day, as `lifetimes` does), the paid revenue so far,
-- and the customer's RFM segment and grade at the period's end.
--
-- The segment is shop.rfm_at's (sql/schema/warehouse.sql), computed in this
-- pass over the customers' weeks and days rather than in a second one: the
-- same 12 months, scores (shop.rfm_score) and grid (shop.rfm_segment),
-- ranked among the customers with a paid order in those months.
WITH spans AS (
    -- Whole weeks and single days (shop.customer_spans), none across the
    -- 12 months' start.
    SELECT *, first_day >= ($2::timestamp - interval '365 days')::date AS recent
    FROM shop.customer_spans('-infinity', $2::date, ARRAY[($2::timestamp - interval '365 days')::date])
),
c AS (
    SELECT user_id,
           sum(days) - 1 AS frequency,
           (max(last_day) - min(first_day)) / 7.0 AS recency,
           extract(epoch FROM $2::timestamp - min(first_day)::timestamp) / 604800 AS age,
           -- The mean of the repeat purchases: without the first purchase's
           -- revenue (the first_revenue of the earliest span).
           CASE WHEN sum(days) > 1
                THEN (sum(paid_revenue) - (min(ARRAY[first_day - date '2000-01-01', first_revenue]))[2]) / (sum(days) - 1)
                ELSE 0 END AS monetary,
           sum(paid_revenue) AS historical,
           -- shop.rfm_at's recency, frequency and monetary value.
           bool_or(recent) AS recent,
           floor(extract(epoch FROM $2::timestamp - max(last_paid_at) FILTER (WHERE recent)) / 86400)::int AS recency_days,
           sum(paid_orders) FILTER (WHERE recent)::bigint AS orders_12m,
           sum(paid_revenue) FILTER (WHERE recent) AS revenue_12m
    FROM spans
    GROUP BY user_id
),
-- The scores of the customers with a paid order in the 12 months, as
-- shop.rfm_at ranks them: by recency and orders counted per value (never
-- NULL for these customers, so the joins keep every one), by revenue
-- sorted.
recent AS (
    SELECT user_id, recency_days, orders_12m, revenue_12m FROM c WHERE recent
),
by_recency AS (
    SELECT recency_days,
           sum(count(*)) OVER (ORDER BY recency_days DESC) - count(*) + 1 AS worse_plus_one
    FROM recent GROUP BY recency_days
),
by_orders AS (
    SELECT orders_12m,
           sum(count(*)) OVER (ORDER BY orders_12m) - count(*) + 1 AS worse_plus_one
    FROM recent GROUP BY orders_12m
),
ranked AS (
    SELECT x.user_id,
           shop.rfm_score(r.worse_plus_one::bigint, n) AS r,
           shop.rfm_score(f.worse_plus_one::bigint, n) AS f,
           shop.rfm_score(rank() OVER (ORDER BY x.revenue_12m), n) AS m
    FROM recent x
    JOIN by_recency r USING (recency_days)
    JOIN by_orders f USING (orders_12m)
    CROSS JOIN (SELECT count(*) AS n FROM recent) k
)
SELECT s.frequency, s.recency, s.age, s.monetary, s.historical,
       CASE WHEN s.recent THEN shop.rfm_segment(k.r, k.f, k.m) ELSE 'No purchase in 12 months' END AS segment,
       coalesce(g.grade, 'BRONZE') AS grade
FROM c s
LEFT JOIN ranked k ON k.user_id = s.user_id
LEFT JOIN shop.grades_at($2::timestamp) g ON g.user_id = s.user_id
