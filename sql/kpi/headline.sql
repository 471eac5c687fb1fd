-- Headline numbers of the period [$1, $2) and of the week before it.
WITH periods AS (
    SELECT 'now' AS p, $1::timestamp AS s, $2::timestamp AS e
    UNION ALL
    SELECT 'prev', $1::timestamp - interval '7 days', $1::timestamp
),
o AS (
    SELECT p.p, o.*
    FROM periods p JOIN shop.orders o ON o.ordered_at >= p.s AND o.ordered_at < p.e
),
m AS (
    SELECT p.p,
           coalesce(sum(o.total_amount) FILTER (WHERE o.status = 'paid'), 0) AS revenue,
           count(o.id) FILTER (WHERE o.status = 'paid') AS orders,
           count(DISTINCT o.user_id) FILTER (WHERE o.status = 'paid') AS active_customers,
           count(o.id) FILTER (WHERE o.status IN ('cancelled', 'refunded')) AS cancelled,
           count(o.id) AS all_orders
    FROM periods p LEFT JOIN o ON o.p = p.p
    GROUP BY p.p
),
newc AS (
    SELECT p.p, count(u.id) AS new_customers
    FROM periods p LEFT JOIN shop.users u ON u.signup_at >= p.s AND u.signup_at < p.e
    GROUP BY p.p
),
repeat AS (
    -- Buyers of the period who had bought before it.
    SELECT p.p,
           count(DISTINCT b.user_id) AS buyers,
           count(DISTINCT b.user_id) FILTER (WHERE EXISTS (
               SELECT 1 FROM shop.orders x
               WHERE x.user_id = b.user_id AND x.status = 'paid' AND x.ordered_at < p.s
           )) AS returning
    FROM periods p
    LEFT JOIN shop.orders b ON b.ordered_at >= p.s AND b.ordered_at < p.e AND b.status = 'paid'
    GROUP BY p.p
),
v AS (
    SELECT m.p, m.revenue, m.orders,
           CASE WHEN m.orders > 0 THEN round(m.revenue / m.orders) END AS aov,
           m.active_customers, n.new_customers,
           CASE WHEN r.buyers > 0 THEN r.returning::numeric / r.buyers END AS repeat_rate,
           CASE WHEN m.all_orders > 0 THEN m.cancelled::numeric / m.all_orders END AS cancel_rate
    FROM m JOIN newc n USING (p) JOIN repeat r USING (p)
)
SELECT 'revenue' AS metric, (SELECT revenue FROM v WHERE p = 'now') AS value, (SELECT revenue FROM v WHERE p = 'prev') AS previous
UNION ALL SELECT 'orders', (SELECT orders FROM v WHERE p = 'now'), (SELECT orders FROM v WHERE p = 'prev')
UNION ALL SELECT 'aov', (SELECT aov FROM v WHERE p = 'now'), (SELECT aov FROM v WHERE p = 'prev')
UNION ALL SELECT 'active_customers', (SELECT active_customers FROM v WHERE p = 'now'), (SELECT active_customers FROM v WHERE p = 'prev')
UNION ALL SELECT 'new_customers', (SELECT new_customers FROM v WHERE p = 'now'), (SELECT new_customers FROM v WHERE p = 'prev')
UNION ALL SELECT 'repeat_rate', (SELECT repeat_rate FROM v WHERE p = 'now'), (SELECT repeat_rate FROM v WHERE p = 'prev')
UNION ALL SELECT 'cancel_rate', (SELECT cancel_rate FROM v WHERE p = 'now'), (SELECT cancel_rate FROM v WHERE p = 'prev')
