-- Reference for tests/integration/kpi.rs: the shipped query of the same name as
-- it was before the daily aggregates, reading shop.orders and
-- shop.order_items. The report must give the same numbers either way.
-- Rows loaded and quarantined in the period, by table and reason.
-- In a fixed order: the tables, then the quarantine's reasons by name.
SELECT item, rows FROM (
    SELECT 1 AS part, 'orders' AS item, count(*) AS rows FROM shop.orders WHERE ordered_at >= $1::timestamp AND ordered_at < $2::timestamp
    UNION ALL SELECT 2, 'order_items', count(*) FROM shop.order_items WHERE ordered_at >= $1::timestamp AND ordered_at < $2::timestamp
    UNION ALL SELECT 3, 'events', count(*) FROM shop.events WHERE ts >= ($1::timestamp AT TIME ZONE 'Asia/Seoul') AND ts < ($2::timestamp AT TIME ZONE 'Asia/Seoul')
    UNION ALL SELECT 4, 'quarantine: ' || reason, count(*) FROM shop.quarantine WHERE ds >= $1::date AND ds < $2::date GROUP BY reason
) x
ORDER BY part, item
