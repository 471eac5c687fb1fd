-- One row per customer with a paid order before the end of the period: the
-- purchase history the lifetime value models read (in weeks, purchase
-- occasions counted by day, as `lifetimes` does), the paid revenue so far,
-- and the customer's RFM segment and grade at the period's end.
WITH occasions AS (
    SELECT user_id, day, paid_revenue AS amount,
           row_number() OVER (PARTITION BY user_id ORDER BY day) = 1 AS first
    FROM shop.customer_daily
    WHERE day < $2::date
),
c AS (
    SELECT user_id,
           count(*) - 1 AS frequency,
           (max(day) - min(day)) / 7.0 AS recency,
           extract(epoch FROM $2::timestamp - min(day)::timestamp) / 604800 AS age,
           CASE WHEN count(*) > 1 THEN sum(amount) FILTER (WHERE NOT first) / (count(*) - 1) ELSE 0 END AS monetary,
           sum(amount) AS historical
    FROM occasions
    GROUP BY user_id
)
SELECT c.frequency, c.recency, c.age, c.monetary, c.historical,
       coalesce(r.segment, 'No purchase in 12 months') AS segment, coalesce(g.grade, 'BRONZE') AS grade
FROM c
LEFT JOIN shop.rfm_at($2::timestamp) r ON r.user_id = c.user_id
LEFT JOIN shop.grades_at($2::timestamp) g ON g.user_id = c.user_id
