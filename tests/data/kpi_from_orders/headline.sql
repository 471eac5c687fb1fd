-- Reference for tests/integration/kpi.rs: the shipped query of the same name as
-- it was before the daily aggregates, reading shop.orders and
-- shop.order_items. The report must give the same numbers either way.
-- Headline numbers of the period [$1, $2) and of the week before it.
WITH periods AS (
    SELECT 'now' AS p, $1::timestamp AS s, $2::timestamp AS e
    UNION ALL
    SELECT 'prev', $1::timestamp - interval '7 days', $1::timestamp
),
-- One scan over both weeks; grouping by period rather than joining the
-- periods keeps it a single pass over a busy fortnight.
m AS (
    SELECT CASE WHEN ordered_at >= $1::timestamp THEN 'now' ELSE 'prev' END AS p,
           coalesce(sum(total_amount) FILTER (WHERE status = 'paid'), 0) AS revenue,
           count(*) FILTER (WHERE status = 'paid') AS orders,
           count(*) FILTER (WHERE status IN ('cancelled', 'refunded')) AS cancelled,
           count(*) AS all_orders
    FROM shop.orders
    WHERE ordered_at >= $1::timestamp - interval '7 days' AND ordered_at < $2::timestamp
    GROUP BY 1
),
newc AS (
    SELECT p.p, count(u.id) AS new_customers
    FROM periods p LEFT JOIN shop.users u ON u.signup_at >= p.s AND u.signup_at < p.e
    GROUP BY p.p
),
-- Repeat customers: of the customers with a paid order in the 12 months
-- up to each period's end, the share with at least two (what a manager
-- means by the repeat purchase rate).
repeat AS (
    SELECT p.p,
           count(*) FILTER (WHERE x.n >= 1) AS buyers_12m,
           count(*) FILTER (WHERE x.n >= 2) AS repeaters_12m
    FROM periods p
    JOIN LATERAL (
        SELECT user_id, count(*) AS n
        FROM shop.orders
        WHERE status = 'paid' AND ordered_at >= p.e - interval '365 days' AND ordered_at < p.e
        GROUP BY user_id
    ) x ON true
    GROUP BY p.p
),
-- Each period's paying customers.
buyers AS (
    SELECT CASE WHEN ordered_at >= $1::timestamp THEN 'now' ELSE 'prev' END AS p, count(DISTINCT user_id) AS buyers
    FROM shop.orders
    WHERE status = 'paid' AND ordered_at >= $1::timestamp - interval '7 days' AND ordered_at < $2::timestamp
    GROUP BY 1
),
v AS (
    SELECT p.p, coalesce(m.revenue, 0) AS revenue, coalesce(m.orders, 0) AS orders,
           CASE WHEN m.orders > 0 THEN round(m.revenue / m.orders) END AS aov,
           coalesce(b.buyers, 0) AS active_customers, n.new_customers,
           CASE WHEN r.buyers_12m > 0 THEN r.repeaters_12m::numeric / r.buyers_12m END AS repeat_rate,
           CASE WHEN m.all_orders > 0 THEN m.cancelled::numeric / m.all_orders END AS cancel_rate
    FROM periods p
    JOIN newc n USING (p)
    LEFT JOIN m USING (p)
    LEFT JOIN buyers b USING (p)
    LEFT JOIN repeat r USING (p)
)
SELECT 'revenue' AS metric, (SELECT revenue FROM v WHERE p = 'now') AS value, (SELECT revenue FROM v WHERE p = 'prev') AS previous
UNION ALL SELECT 'orders', (SELECT orders FROM v WHERE p = 'now'), (SELECT orders FROM v WHERE p = 'prev')
UNION ALL SELECT 'aov', (SELECT aov FROM v WHERE p = 'now'), (SELECT aov FROM v WHERE p = 'prev')
UNION ALL SELECT 'active_customers', (SELECT active_customers FROM v WHERE p = 'now'), (SELECT active_customers FROM v WHERE p = 'prev')
UNION ALL SELECT 'new_customers', (SELECT new_customers FROM v WHERE p = 'now'), (SELECT new_customers FROM v WHERE p = 'prev')
UNION ALL SELECT 'repeat_rate', (SELECT repeat_rate FROM v WHERE p = 'now'), (SELECT repeat_rate FROM v WHERE p = 'prev')
UNION ALL SELECT 'cancel_rate', (SELECT cancel_rate FROM v WHERE p = 'now'), (SELECT cancel_rate FROM v WHERE p = 'prev')
