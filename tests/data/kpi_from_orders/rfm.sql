-- Reference for tests/integration/kpi.rs: the shipped query of the same name as
-- it was before the daily aggregates, reading shop.orders and
-- shop.order_items. The report must give the same numbers either way.
-- RFM segments at the end of the period (shop.rfm_at, in
-- sql/schema/warehouse.sql, defines the scores and the segment grid):
-- customers, their paid revenue over the 12 months, and their averages.
SELECT segment, count(*) AS customers, sum(monetary) AS revenue,
       round(avg(recency_days)) AS avg_recency_days, round(avg(frequency), 1) AS avg_orders,
       round(avg(monetary)) AS avg_revenue
FROM shop.rfm_at_from_orders($2::timestamp)
GROUP BY segment
ORDER BY revenue DESC, segment
