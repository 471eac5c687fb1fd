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
-- Each period's paying customers once (a busy week has many orders per
-- customer), then whether they had bought before the period: one index
-- probe per customer, however long the history.
buyers AS (
    SELECT DISTINCT CASE WHEN ordered_at >= $1::timestamp THEN 'now' ELSE 'prev' END AS p, user_id
    FROM shop.orders
    WHERE status = 'paid' AND ordered_at >= $1::timestamp - interval '7 days' AND ordered_at < $2::timestamp
),
repeat AS (
    SELECT b.p,
           count(*) AS buyers,
           count(*) FILTER (WHERE EXISTS (
               SELECT 1 FROM shop.orders x
               WHERE x.user_id = b.user_id AND x.status = 'paid' AND x.ordered_at < p.s
           )) AS returning
    FROM buyers b JOIN periods p USING (p)
    GROUP BY b.p
),
v AS (
    SELECT p.p, coalesce(m.revenue, 0) AS revenue, coalesce(m.orders, 0) AS orders,
           CASE WHEN m.orders > 0 THEN round(m.revenue / m.orders) END AS aov,
           coalesce(r.buyers, 0) AS active_customers, n.new_customers,
           CASE WHEN r.buyers > 0 THEN r.returning::numeric / r.buyers END AS repeat_rate,
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
