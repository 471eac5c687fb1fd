-- Sessions reaching each step, from the application's events.
WITH s AS (
    SELECT session_id,
           bool_or(event = 'visit') AS visit, bool_or(event = 'view') AS view,
           bool_or(event = 'cart') AS cart, bool_or(event = 'purchase') AS purchase
    FROM shop.events
    WHERE ts >= ($1::timestamp AT TIME ZONE 'Asia/Seoul') AND ts < ($2::timestamp AT TIME ZONE 'Asia/Seoul')
    GROUP BY session_id
)
SELECT 'visit' AS stage, count(*) FILTER (WHERE visit) AS sessions, 1 AS i FROM s
UNION ALL SELECT 'view', count(*) FILTER (WHERE view), 2 FROM s
UNION ALL SELECT 'cart', count(*) FILTER (WHERE cart), 3 FROM s
UNION ALL SELECT 'purchase', count(*) FILTER (WHERE purchase), 4 FROM s
ORDER BY i
