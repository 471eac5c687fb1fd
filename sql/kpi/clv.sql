-- One row per customer with a paid order before the end of the period: the
-- purchase history the lifetime value models read (in weeks, purchase
-- occasions counted by day, as `lifetimes` does), the paid revenue so far,
-- and the customer's RFM segment and grade at the period's end.
--
-- The segment is shop.rfm_at's (sql/schema/warehouse.sql), computed in this
-- pass over the daily aggregates rather than in a second one: the same 12
-- months, scores (shop.rfm_score) and grid (shop.rfm_segment), ranked among
-- the customers with a paid order in those months.
WITH occasions AS (
    SELECT user_id, day, paid_revenue AS amount, paid_orders, last_paid_at,
           row_number() OVER (PARTITION BY user_id ORDER BY day) = 1 AS first,
           day >= ($2::timestamp - interval '365 days')::date AS recent
    FROM shop.customer_daily
    WHERE day < $2::date
),
c AS (
    SELECT user_id,
           count(*) - 1 AS frequency,
           (max(day) - min(day)) / 7.0 AS recency,
           extract(epoch FROM $2::timestamp - min(day)::timestamp) / 604800 AS age,
           CASE WHEN count(*) > 1 THEN sum(amount) FILTER (WHERE NOT first) / (count(*) - 1) ELSE 0 END AS monetary,
           sum(amount) AS historical,
           -- shop.rfm_at's recency, frequency and monetary value.
           bool_or(recent) AS recent,
           floor(extract(epoch FROM $2::timestamp - max(last_paid_at) FILTER (WHERE recent)) / 86400)::int AS recency_days,
           sum(paid_orders) FILTER (WHERE recent)::bigint AS orders_12m,
           sum(amount) FILTER (WHERE recent) AS revenue_12m
    FROM occasions
    GROUP BY user_id
),
scored AS (
    SELECT c.*,
           shop.rfm_score(rank() OVER (PARTITION BY recent ORDER BY recency_days DESC), count(*) OVER (PARTITION BY recent)) AS r,
           shop.rfm_score(rank() OVER (PARTITION BY recent ORDER BY orders_12m), count(*) OVER (PARTITION BY recent)) AS f,
           shop.rfm_score(rank() OVER (PARTITION BY recent ORDER BY revenue_12m), count(*) OVER (PARTITION BY recent)) AS m
    FROM c
)
SELECT s.frequency, s.recency, s.age, s.monetary, s.historical,
       CASE WHEN s.recent THEN shop.rfm_segment(s.r, s.f, s.m) ELSE 'No purchase in 12 months' END AS segment,
       coalesce(g.grade, 'BRONZE') AS grade
FROM scored s
LEFT JOIN shop.grades_at($2::timestamp) g ON g.user_id = s.user_id
