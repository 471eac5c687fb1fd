-- Paid revenue and orders per day of the period, next to the same weekday
-- of the week before.
WITH days AS (
    SELECT d::date AS day, row_number() OVER (ORDER BY d) - 1 AS i
    FROM generate_series($1::timestamp, $2::timestamp - interval '1 day', interval '1 day') d
),
-- From the hourly aggregates the ETL keeps (shop.sales_hourly).
agg AS (
    SELECT day, sum(paid_revenue) AS revenue, sum(paid_orders)::bigint AS orders
    FROM shop.sales_hourly
    WHERE day >= $1::date - 7 AND day < $2::date
    GROUP BY 1
    HAVING sum(paid_orders) > 0
)
SELECT to_char(d.day, 'MM-DD') AS day,
       coalesce(cur.revenue, 0) AS this_revenue, coalesce(prev.revenue, 0) AS last_revenue,
       coalesce(cur.orders, 0) AS this_orders, coalesce(prev.orders, 0) AS last_orders
FROM days d
LEFT JOIN agg cur ON cur.day = d.day
LEFT JOIN agg prev ON prev.day = d.day - 7
ORDER BY d.i
