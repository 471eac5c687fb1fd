-- Reference for tests/integration/kpi.rs: the shipped query of the same name as
-- it was before the daily aggregates, reading shop.orders and
-- shop.order_items. The report must give the same numbers either way.
-- The ten products with the most paid revenue in the period.
SELECT row_number() OVER (ORDER BY sum(i.quantity * i.unit_price) DESC) AS rank,
       p.name, p.category, sum(i.quantity) AS units, sum(i.quantity * i.unit_price) AS revenue
FROM shop.order_items i
JOIN shop.orders o ON o.id = i.order_id AND o.status = 'paid'
JOIN shop.products p ON p.id = i.product_id
WHERE i.ordered_at >= $1::timestamp AND i.ordered_at < $2::timestamp
GROUP BY p.id, p.name, p.category
ORDER BY revenue DESC
LIMIT 10
