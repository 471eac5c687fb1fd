-- Recounts paid orders for the products sold in the day ($1, $2): a
-- recomputation, so rerunning a day changes nothing.
UPDATE shop.products p
SET order_count = c.n
FROM (
    SELECT i.product_id, count(DISTINCT i.order_id) AS n
    FROM shop.order_items i
    JOIN shop.orders o ON o.id = i.order_id AND o.status = 'paid'
    WHERE i.product_id IN (
        SELECT product_id FROM shop.order_items WHERE ordered_at >= $1::timestamp AND ordered_at < $2::timestamp
    )
    GROUP BY i.product_id
) c
WHERE p.id = c.product_id AND p.order_count IS DISTINCT FROM c.n;
