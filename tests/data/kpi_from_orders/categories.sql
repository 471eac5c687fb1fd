-- Reference for tests/integration/kpi.rs: the shipped query of the same name as
-- it was before the daily aggregates, reading shop.orders and
-- shop.order_items. The report must give the same numbers either way.
-- Paid revenue by category, with its share of the period's revenue.
SELECT p.category,
       sum(i.quantity * i.unit_price) AS revenue,
       round(100.0 * sum(i.quantity * i.unit_price) / nullif(sum(sum(i.quantity * i.unit_price)) OVER (), 0), 1) AS share
FROM shop.order_items i
JOIN shop.orders o ON o.id = i.order_id AND o.status = 'paid'
JOIN shop.products p ON p.id = i.product_id
WHERE i.ordered_at >= $1::timestamp AND i.ordered_at < $2::timestamp
GROUP BY p.category
ORDER BY revenue DESC, p.category
