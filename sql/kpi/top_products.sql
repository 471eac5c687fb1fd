-- The ten products with the most paid revenue in the period (the first
-- added, of equal ones), from their daily sales (shop.product_sales_daily).
SELECT row_number() OVER (ORDER BY sum(s.revenue) DESC, p.id) AS rank,
       p.name, p.category, sum(s.units)::bigint AS units, sum(s.revenue) AS revenue
FROM shop.product_sales_daily s
JOIN shop.products p ON p.id = s.product_id
WHERE s.day >= $1::date AND s.day < $2::date
GROUP BY p.id, p.name, p.category
ORDER BY revenue DESC, p.id
LIMIT 10
