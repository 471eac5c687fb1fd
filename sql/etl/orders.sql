-- One row per order from its lines; the partner channel's feed marks its
-- orders and gives its own total, which a check compares (polars SQL).
SELECT o.id, o.user_id, o.ordered_at, o.status, o.total_amount, o.item_count, o.payment_method,
       CASE WHEN p.order_id IS NULL THEN 'direct' ELSE 'partner' END AS channel,
       p.total AS partner_total
FROM (
    SELECT order_id AS id, min(user_id) AS user_id, min(ordered_at) AS ordered_at, min(status) AS status,
           sum(quantity * unit_price) AS total_amount, count(*) AS item_count, min(payment_method) AS payment_method
    FROM lines
    GROUP BY order_id
) o
LEFT JOIN partner p ON p.order_id = o.id
ORDER BY o.id
