-- Order lines of orders whose every line is valid (polars SQL).
-- An order with an unknown user, an unknown product, a product created
-- after the order, or a non-positive quantity is quarantined whole (order_lines_rejects.sql), so that an
-- order's total never silently loses a line. Exact duplicate lines are kept
-- once (and the extra copies quarantined).
-- Tables: lines (today's orders.csv), new_users / old_users (today's
-- sign-ups and the warehouse's users), new_products / old_products.
WITH users AS (
    SELECT id FROM new_users UNION SELECT id FROM old_users
),
products AS (
    SELECT id, created_at FROM new_products UNION SELECT id, created_at FROM old_products
),
checked AS (
    SELECT l.order_id, l.user_id, l.ordered_at, l.status, l.payment_method, l.line_no, l.product_id,
           l.quantity, l.unit_price, u.id IS NULL AS unknown_user, p.id IS NULL AS unknown_product,
           coalesce(p.created_at > l.ordered_at, false) AS not_yet_created
    FROM lines l
    LEFT JOIN users u ON u.id = l.user_id
    LEFT JOIN products p ON p.id = l.product_id
),
bad_orders AS (
    SELECT DISTINCT order_id FROM checked WHERE unknown_user OR unknown_product OR not_yet_created OR quantity <= 0
)
SELECT DISTINCT order_id, user_id, ordered_at, status, payment_method, line_no, product_id, quantity, unit_price
FROM checked
WHERE order_id NOT IN (SELECT order_id FROM bad_orders)
ORDER BY order_id, line_no
