-- Sessions reaching each step in the period, from the daily funnel the
-- ETL keeps (shop.funnel_daily).
SELECT s.stage, coalesce(sum(f.sessions), 0) AS sessions
FROM (VALUES ('visit', 1), ('view', 2), ('cart', 3), ('purchase', 4)) AS s(stage, i)
LEFT JOIN shop.funnel_daily f ON f.stage = s.stage AND f.day >= $1::date AND f.day < $2::date
GROUP BY s.stage, s.i
ORDER BY s.i
