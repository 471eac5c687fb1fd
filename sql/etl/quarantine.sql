-- Everything the day's run refused, in one shape (polars SQL).
SELECT DATE('{{ ds }}') AS ds, 'users.ndjson' AS source, line, CAST(NULL AS BIGINT) AS order_id, reason, detail, raw AS record
FROM users_rejected
UNION ALL
SELECT DATE('{{ ds }}') AS ds, 'products.csv' AS source, line, CAST(NULL AS BIGINT) AS order_id, reason, detail, raw AS record
FROM products_rejected
UNION ALL
SELECT DATE('{{ ds }}') AS ds, 'orders.csv' AS source, line, CAST(NULL AS BIGINT) AS order_id, reason, detail, raw AS record
FROM orders_rejected
UNION ALL
SELECT DATE('{{ ds }}') AS ds, 'visits.log' AS source, line, CAST(NULL AS BIGINT) AS order_id, reason, detail, raw AS record
FROM visits_rejected
UNION ALL
SELECT DATE('{{ ds }}') AS ds, 'orders.csv' AS source, CAST(NULL AS BIGINT) AS line, order_id, reason,
       'line ' || CAST(line_no AS VARCHAR) AS detail, 'product ' || CAST(product_id AS VARCHAR) AS record
FROM lines_rejected
