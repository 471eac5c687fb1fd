-- Products whose first paid purchase happened in the period: sold (paid) in
-- the period and never before it. The "never before" probe uses the
-- (product_id, ordered_at) index, so its cost does not grow with history.
WITH sold AS (
    SELECT i.product_id, min(i.ordered_at) AS first_at, sum(i.quantity) AS units
    FROM shop.order_items i JOIN shop.orders o ON o.id = i.order_id AND o.status = 'paid'
    WHERE i.ordered_at >= $1::timestamp AND i.ordered_at < $2::timestamp
    GROUP BY i.product_id
)
SELECT p.name, p.category, to_char(s.first_at, 'MM-DD HH24:MI') AS first_purchase, s.units
FROM sold s
JOIN shop.products p ON p.id = s.product_id
-- LIMIT 1 keeps this a probe per product (a plain NOT EXISTS may be
-- planned as an anti join over the whole history).
LEFT JOIN LATERAL (
    SELECT 1 AS found
    FROM shop.order_items i JOIN shop.orders o ON o.id = i.order_id AND o.status = 'paid'
    WHERE i.product_id = s.product_id AND i.ordered_at < $1::timestamp
    LIMIT 1
) earlier ON true
WHERE earlier.found IS NULL
ORDER BY s.units DESC, s.first_at
LIMIT 10
