-- The day's aggregates for the weekly report ($1 = ds): sales per hour,
-- per product and per customer (shop.refresh_daily, in
-- sql/schema/warehouse.sql), recomputed from the day's orders and lines,
-- so rerunning or reloading a day leaves them right.
SELECT shop.refresh_daily($1::date, $1::date);
