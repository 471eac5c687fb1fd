-- Paid revenue by category, with its share of the period's revenue, from
-- the products' daily sales the ETL keeps (shop.product_sales_daily).
SELECT p.category,
       sum(s.revenue) AS revenue,
       round(100.0 * sum(s.revenue) / nullif(sum(sum(s.revenue)) OVER (), 0), 1) AS share
FROM shop.product_sales_daily s
JOIN shop.products p ON p.id = s.product_id
WHERE s.day >= $1::date AND s.day < $2::date
GROUP BY p.category
ORDER BY revenue DESC, p.category
