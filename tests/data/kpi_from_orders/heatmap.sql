-- Reference for tests/integration/kpi.rs: the shipped query of the same name as
-- it was before the daily aggregates, reading shop.orders and
-- shop.order_items. The report must give the same numbers either way.
-- Paid orders by weekday (1 = Monday) and hour of the day: the same orders
-- as the Orders card, so the cells add up to it.
SELECT extract(isodow FROM ordered_at)::int AS weekday, extract(hour FROM ordered_at)::int AS hour, count(*) AS orders
FROM shop.orders
WHERE status = 'paid' AND ordered_at >= $1::timestamp AND ordered_at < $2::timestamp
GROUP BY 1, 2
ORDER BY 1, 2
