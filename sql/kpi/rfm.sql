-- RFM segments of customers with a paid order in the year before the end
-- of the period: quintile scores (5 = best) for recency, frequency and
-- monetary value, named with the usual segment map.
WITH c AS (
    SELECT user_id,
           extract(epoch FROM $2::timestamp - max(ordered_at)) / 86400 AS recency_days,
           count(*) AS frequency,
           sum(total_amount) AS monetary
    FROM shop.orders
    WHERE status = 'paid' AND ordered_at >= $2::timestamp - interval '365 days' AND ordered_at < $2::timestamp
    GROUP BY user_id
),
s AS (
    SELECT *, ntile(5) OVER (ORDER BY recency_days DESC) AS r,
              ntile(5) OVER (ORDER BY frequency) AS f,
              ntile(5) OVER (ORDER BY monetary) AS m
    FROM c
),
seg AS (
    SELECT *, CASE
        WHEN r >= 4 AND f >= 4 THEN 'Champions'
        WHEN r <= 2 AND f = 5 THEN 'Can''t Lose Them'
        WHEN r <= 2 AND f >= 3 THEN 'At Risk'
        WHEN r >= 3 AND f >= 3 THEN 'Loyal'
        WHEN r >= 4 AND f = 2 THEN 'Potential Loyalists'
        WHEN r = 5 AND f = 1 THEN 'New Customers'
        WHEN r = 4 AND f = 1 THEN 'Promising'
        WHEN r = 3 AND f = 2 THEN 'Need Attention'
        WHEN r = 3 AND f = 1 THEN 'About to Sleep'
        WHEN r = 2 THEN 'Hibernating'
        ELSE 'Lost' END AS segment
    FROM s
)
SELECT segment, count(*) AS customers, sum(monetary) AS revenue,
       round(avg(recency_days)) AS avg_recency_days, round(avg(frequency), 1) AS avg_orders
FROM seg
GROUP BY segment
ORDER BY revenue DESC
