-- Reference for tests/integration/kpi.rs: the shipped query of the same name as
-- it was before the daily aggregates, reading shop.orders and
-- shop.order_items. The report must give the same numbers either way.
-- Paid revenue and orders per day of the period, next to the same weekday
-- of the week before.
WITH days AS (
    SELECT d::date AS day, row_number() OVER (ORDER BY d) - 1 AS i
    FROM generate_series($1::timestamp, $2::timestamp - interval '1 day', interval '1 day') d
),
agg AS (
    SELECT ordered_at::date AS day, sum(total_amount) AS revenue, count(*) AS orders
    FROM shop.orders
    WHERE status = 'paid' AND ordered_at >= $1::timestamp - interval '7 days' AND ordered_at < $2::timestamp
    GROUP BY 1
)
SELECT to_char(d.day, 'MM-DD') AS day,
       coalesce(cur.revenue, 0) AS this_revenue, coalesce(prev.revenue, 0) AS last_revenue,
       coalesce(cur.orders, 0) AS this_orders, coalesce(prev.orders, 0) AS last_orders
FROM days d
LEFT JOIN agg cur ON cur.day = d.day
LEFT JOIN agg prev ON prev.day = d.day - 7
ORDER BY d.i
