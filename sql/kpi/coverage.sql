-- Whether each day of the period has data (any order loaded): a day
-- without is a day the ETL has not loaded yet, and the report says so.
SELECT to_char(d, 'MM-DD') AS day,
       EXISTS (SELECT 1 FROM shop.orders o WHERE o.ordered_at >= d AND o.ordered_at < d + interval '1 day') AS loaded
FROM generate_series($1::timestamp, $2::timestamp - interval '1 day', interval '1 day') d
ORDER BY d
