-- Lines of orders refused by order_lines.sql, each with the order's reason,
-- and the extra copies of duplicated lines (polars SQL).
WITH users AS (
    SELECT id FROM new_users UNION SELECT id FROM old_users
),
products AS (
    SELECT id, created_at FROM new_products UNION SELECT id, created_at FROM old_products
),
checked AS (
    SELECT l.order_id, l.line_no, l.user_id, l.product_id, l.quantity, l.unit_price,
           CAST(u.id IS NULL AS INT) AS unknown_user, CAST(p.id IS NULL AS INT) AS unknown_product,
           CAST(coalesce(p.created_at > l.ordered_at, false) AS INT) AS not_yet_created
    FROM lines l
    LEFT JOIN users u ON u.id = l.user_id
    LEFT JOIN products p ON p.id = l.product_id
),
reasons AS (
    SELECT order_id,
           CASE WHEN max(unknown_user) = 1 THEN 'unknown user'
                WHEN max(unknown_product) = 1 THEN 'unknown product'
                WHEN max(not_yet_created) = 1 THEN 'product not yet created'
                ELSE 'negative quantity' END AS reason
    FROM checked
    GROUP BY order_id
    HAVING max(unknown_user) = 1 OR max(unknown_product) = 1 OR max(not_yet_created) = 1 OR min(quantity) <= 0
)
SELECT c.order_id, c.line_no, c.user_id, c.product_id, c.quantity, c.unit_price, r.reason
FROM checked c JOIN reasons r ON r.order_id = c.order_id
UNION ALL
SELECT order_id, line_no, user_id, product_id, quantity, unit_price, 'duplicate line' AS reason
FROM lines
GROUP BY order_id, user_id, ordered_at, status, payment_method, line_no, product_id, quantity, unit_price
HAVING count(*) > 1
