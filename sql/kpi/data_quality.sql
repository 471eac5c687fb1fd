-- Rows loaded and quarantined in the period, by table and reason.
-- Orders and their lines from the hourly aggregates the ETL keeps, events
-- from their daily counts.
SELECT 'orders' AS item, coalesce(sum(orders), 0)::bigint AS rows FROM shop.sales_hourly WHERE day >= $1::date AND day < $2::date
UNION ALL SELECT 'order_items', coalesce(sum(lines), 0)::bigint FROM shop.sales_hourly WHERE day >= $1::date AND day < $2::date
UNION ALL SELECT 'events', coalesce(sum(events), 0)::bigint FROM shop.events_daily WHERE day >= $1::date AND day < $2::date
UNION ALL SELECT 'quarantine: ' || reason, count(*) FROM shop.quarantine WHERE ds >= $1::date AND ds < $2::date GROUP BY reason
