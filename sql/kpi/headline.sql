-- Headline numbers of the period [$1, $2) and of the week before it.
WITH periods AS (
    SELECT 'now' AS p, $1::timestamp AS s, $2::timestamp AS e
    UNION ALL
    SELECT 'prev', $1::timestamp - interval '7 days', $1::timestamp
),
-- Both weeks from the hourly aggregates (shop.sales_hourly, kept by the
-- ETL; the periods are whole days).
m AS (
    SELECT CASE WHEN day >= $1::date THEN 'now' ELSE 'prev' END AS p,
           sum(paid_revenue) AS revenue,
           sum(paid_orders)::bigint AS orders,
           sum(cancelled_orders)::bigint AS cancelled,
           sum(orders)::bigint AS all_orders
    FROM shop.sales_hourly
    WHERE day >= $1::date - 7 AND day < $2::date
    GROUP BY 1
),
newc AS (
    SELECT p.p, count(u.id) AS new_customers
    FROM periods p LEFT JOIN shop.users u ON u.signup_at >= p.s AND u.signup_at < p.e
    GROUP BY p.p
),
-- Repeat customers: of the customers with a paid order in the 12 months
-- up to each period's end, the share with at least two (what a manager
-- means by the repeat purchase rate). One pass over the customers' weeks
-- and days (shop.customer_spans: each row has a paid order, and none spans
-- the 12 months' start, $1 or the week before it) counts both windows: the
-- 12 months to $2, and to $1 for the week before; and each period's paying
-- customers, which the 12 months contain.
per_user AS (
    SELECT sum(paid_orders) FILTER (WHERE first_day >= ($2::timestamp - interval '365 days')::date) AS n_now,
           sum(paid_orders) FILTER (WHERE first_day < $1::date) AS n_prev,
           bool_or(first_day >= $1::date) AS bought_now,
           bool_or(first_day >= $1::date - 7 AND first_day < $1::date) AS bought_prev
    FROM shop.customer_spans(($1::timestamp - interval '365 days')::date, $2::date,
                             ARRAY[($2::timestamp - interval '365 days')::date, $1::date, $1::date - 7])
    GROUP BY user_id
),
repeat AS (
    SELECT 'now' AS p, count(*) FILTER (WHERE n_now >= 1) AS buyers_12m, count(*) FILTER (WHERE n_now >= 2) AS repeaters_12m,
           count(*) FILTER (WHERE bought_now) AS buyers
    FROM per_user
    UNION ALL
    SELECT 'prev', count(*) FILTER (WHERE n_prev >= 1), count(*) FILTER (WHERE n_prev >= 2),
           count(*) FILTER (WHERE bought_prev)
    FROM per_user
),
v AS (
    SELECT p.p, coalesce(m.revenue, 0) AS revenue, coalesce(m.orders, 0) AS orders,
           CASE WHEN m.orders > 0 THEN round(m.revenue / m.orders) END AS aov,
           coalesce(r.buyers, 0) AS active_customers, n.new_customers,
           CASE WHEN r.buyers_12m > 0 THEN r.repeaters_12m::numeric / r.buyers_12m END AS repeat_rate,
           CASE WHEN m.all_orders > 0 THEN m.cancelled::numeric / m.all_orders END AS cancel_rate
    FROM periods p
    JOIN newc n USING (p)
    LEFT JOIN m USING (p)
    LEFT JOIN repeat r USING (p)
)
SELECT 'revenue' AS metric, (SELECT revenue FROM v WHERE p = 'now') AS value, (SELECT revenue FROM v WHERE p = 'prev') AS previous
UNION ALL SELECT 'orders', (SELECT orders FROM v WHERE p = 'now'), (SELECT orders FROM v WHERE p = 'prev')
UNION ALL SELECT 'aov', (SELECT aov FROM v WHERE p = 'now'), (SELECT aov FROM v WHERE p = 'prev')
UNION ALL SELECT 'active_customers', (SELECT active_customers FROM v WHERE p = 'now'), (SELECT active_customers FROM v WHERE p = 'prev')
UNION ALL SELECT 'new_customers', (SELECT new_customers FROM v WHERE p = 'now'), (SELECT new_customers FROM v WHERE p = 'prev')
UNION ALL SELECT 'repeat_rate', (SELECT repeat_rate FROM v WHERE p = 'now'), (SELECT repeat_rate FROM v WHERE p = 'prev')
UNION ALL SELECT 'cancel_rate', (SELECT cancel_rate FROM v WHERE p = 'now'), (SELECT cancel_rate FROM v WHERE p = 'prev')
