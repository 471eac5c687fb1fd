-- Products whose first paid purchase happened in the period.
WITH first_sale AS (
    SELECT i.product_id, min(i.ordered_at) AS first_at
    FROM shop.order_items i JOIN shop.orders o ON o.id = i.order_id AND o.status = 'paid'
    GROUP BY i.product_id
)
SELECT p.name, p.category, to_char(f.first_at, 'MM-DD HH24:MI') AS first_purchase,
       (SELECT sum(i.quantity) FROM shop.order_items i
         WHERE i.product_id = p.id AND i.ordered_at >= $1::timestamp AND i.ordered_at < $2::timestamp) AS units
FROM first_sale f JOIN shop.products p ON p.id = f.product_id
WHERE f.first_at >= $1::timestamp AND f.first_at < $2::timestamp
ORDER BY units DESC NULLS LAST, f.first_at
LIMIT 10
