-- Rows loaded and quarantined in the period, by table and reason.
-- Orders and their lines from the hourly aggregates the ETL keeps, events
-- from their daily counts.
-- In a fixed order: the tables, then the quarantine's reasons by name.
SELECT item, rows FROM (
    SELECT 1 AS part, 'orders' AS item, coalesce(sum(orders), 0)::bigint AS rows FROM shop.sales_hourly WHERE day >= $1::date AND day < $2::date
    UNION ALL SELECT 2, 'order_items', coalesce(sum(lines), 0)::bigint FROM shop.sales_hourly WHERE day >= $1::date AND day < $2::date
    UNION ALL SELECT 3, 'events', coalesce(sum(events), 0)::bigint FROM shop.events_daily WHERE day >= $1::date AND day < $2::date
    UNION ALL SELECT 4, 'quarantine: ' || reason, count(*) FROM shop.quarantine WHERE ds >= $1::date AND ds < $2::date GROUP BY reason
) x
ORDER BY part, item
