-- Paid orders by weekday (1 = Monday) and hour of the day: the same orders
-- as the Orders card, so the cells add up to it. From the hourly
-- aggregates the ETL keeps (shop.sales_hourly).
SELECT extract(isodow FROM day)::int AS weekday, hour::int AS hour, sum(paid_orders)::bigint AS orders
FROM shop.sales_hourly
WHERE day >= $1::date AND day < $2::date
GROUP BY 1, 2
HAVING sum(paid_orders) > 0
ORDER BY 1, 2
