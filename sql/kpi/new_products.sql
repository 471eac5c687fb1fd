-- Products added to the catalogue in the period (created_at in the
-- period), with their paid units and revenue in it, best sellers first.
SELECT p.name, p.category, to_char(p.created_at, 'MM-DD HH24:MI') AS created,
       coalesce(s.units, 0) AS units, coalesce(s.revenue, 0) AS revenue
FROM shop.products p
LEFT JOIN LATERAL (
    SELECT sum(d.units)::bigint AS units, sum(d.revenue) AS revenue
    FROM shop.product_sales_daily d
    WHERE d.product_id = p.id AND d.day >= $1::date AND d.day < $2::date
) s ON true
WHERE p.created_at >= $1::timestamp AND p.created_at < $2::timestamp
ORDER BY coalesce(s.units, 0) DESC, p.created_at
LIMIT 10
