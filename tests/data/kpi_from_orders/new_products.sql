-- Reference for tests/integration/kpi.rs: the shipped query of the same name as
-- it was before the daily aggregates, reading shop.orders and
-- shop.order_items. The report must give the same numbers either way.
-- Products added to the catalogue in the period (created_at in the
-- period), with their paid units and revenue in it, best sellers first.
SELECT p.name, p.category, to_char(p.created_at, 'MM-DD HH24:MI') AS created,
       coalesce(s.units, 0) AS units, coalesce(s.revenue, 0) AS revenue
FROM shop.products p
LEFT JOIN LATERAL (
    SELECT sum(i.quantity) AS units, sum(i.quantity * i.unit_price) AS revenue
    FROM shop.order_items i JOIN shop.orders o ON o.id = i.order_id AND o.status = 'paid'
    WHERE i.product_id = p.id AND i.ordered_at >= $1::timestamp AND i.ordered_at < $2::timestamp
) s ON true
WHERE p.created_at >= $1::timestamp AND p.created_at < $2::timestamp
ORDER BY coalesce(s.units, 0) DESC, p.created_at
LIMIT 10
