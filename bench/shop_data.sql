-- A large shop warehouse for the grade and report benchmarks, made with
-- generate_series (the demo's generator is exact but sized for 90 days).
-- setseed makes every run produce the same data.
--
--   psql -v users=1000000 -v orders=10000000 -v days=240 -v end_ts="'2026-11-16'" \
--        -v items=0 -v events_days=0 -f bench/shop_data.sql
--
-- users      customers, signed up over the year before end_ts
-- orders     orders, uniform over the `days` days before end_ts; user ids are
--            skewed (power 2.5) so that a few customers buy a lot: every grade
--            from VIP to BRONZE occurs
-- items      1: 1-4 order lines per order (the report reads them)
-- events_days  funnel events for orders in the last N days, plus two
--            non-buying sessions per order
\set ON_ERROR_STOP on
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS shop CASCADE;
\i sql/schema/warehouse.sql
SELECT setseed(0.42) \g /dev/null

INSERT INTO shop.products (id, name, category, price, stock, created_at)
SELECT g,
       '상품 ' || g,
       (ARRAY['식품', '정육', '과일', '생활용품', '전자기기', '패션의류', '뷰티', '도서', '스포츠레저', '선물세트'])[1 + g % 10],
       (1000 + (g * 7919) % 200) * 100,
       100,
       (:end_ts)::timestamp - make_interval(days => (g * 13) % 400)
FROM generate_series(1, 2000) g;

INSERT INTO shop.users (id, name, gender, region, signup_at, grade)
SELECT g, '고객 ' || g, CASE WHEN g % 2 = 0 THEN 'F' ELSE 'M' END,
       (ARRAY['서울', '경기', '부산', '인천', '대구'])[1 + g % 5],
       (:end_ts)::timestamp - make_interval(secs => random() * 365 * 86400),
       'BRONZE'
FROM generate_series(1, :users) g;

INSERT INTO shop.orders (id, user_id, ordered_at, status, total_amount, item_count, payment_method, channel)
SELECT g,
       1 + floor(:users * power(random(), 2.5))::bigint,
       (:end_ts)::timestamp - make_interval(secs => random() * :days * 86400),
       CASE WHEN random() < 0.93 THEN 'paid' WHEN random() < 0.5 THEN 'cancelled' ELSE 'refunded' END,
       round(10000 + random() * 190000),
       1 + g % 4,
       (ARRAY['card', 'kakaopay', 'naverpay', 'bank'])[1 + g % 4],
       (ARRAY['direct', 'search', 'social', 'email'])[1 + (g / 4) % 4]
FROM generate_series(1, :orders) g;

\if :items
INSERT INTO shop.order_items (order_id, line_no, product_id, quantity, unit_price, ordered_at)
SELECT o.id, l, 1 + (o.id * 31 + l * 17) % 2000, 1 + (o.id + l) % 3, round(o.total_amount / o.item_count), o.ordered_at
FROM shop.orders o, generate_series(1, o.item_count) l;
\endif

-- Sessions: each order's buyer went visit -> view -> cart -> purchase; two
-- more sessions per order stopped after a visit or a view.
INSERT INTO shop.events (ts, event, session_id, user_id, product_id, order_id)
SELECT (o.ordered_at AT TIME ZONE 'Asia/Seoul') - make_interval(mins => 4 - s.i), s.ev, 's' || o.id || k.k, o.user_id, 1 + o.id % 2000,
       CASE WHEN s.ev = 'purchase' THEN o.id END
FROM shop.orders o
CROSS JOIN (VALUES (0), (1), (2)) AS k(k)
JOIN LATERAL (VALUES (1, 'visit'), (2, 'view'), (3, 'cart'), (4, 'purchase')) AS s(i, ev) ON s.i <= CASE k.k WHEN 0 THEN 4 WHEN 1 THEN 1 ELSE 2 END
WHERE o.ordered_at >= (:end_ts)::timestamp - make_interval(days => :events_days);

INSERT INTO shop.funnel_daily (day, stage, sessions)
SELECT (ts AT TIME ZONE 'Asia/Seoul')::date, event, count(DISTINCT session_id) FROM shop.events GROUP BY 1, 2;
INSERT INTO shop.events_daily (day, events)
SELECT (ts AT TIME ZONE 'Asia/Seoul')::date, count(*) FROM shop.events GROUP BY 1;

-- The daily aggregates the ETL would keep (the weekly report reads them).
SELECT shop.refresh_daily(min(ordered_at)::date, max(ordered_at)::date) FROM shop.orders \g /dev/null

-- A few grade changes and refused rows, so that every report section has data.
INSERT INTO shop.grade_history (user_id, old_grade, new_grade, changed_at, reason, spend_6m, orders_6m)
SELECT g, 'BRONZE', 'SILVER', (:end_ts)::timestamp - make_interval(hours => g % 300), 'upgrade', 600000, 6
FROM generate_series(1, least(:users, 5000)) g;
INSERT INTO shop.quarantine (ds, source, line, reason, detail)
SELECT ((:end_ts)::timestamp - make_interval(days => 1 + g % 7))::date, 'orders.csv', g, 'bad_amount', 'amount is not a number'
FROM generate_series(1, 50) g;

VACUUM ANALYZE shop.users, shop.products, shop.orders, shop.order_items, shop.events, shop.funnel_daily, shop.events_daily,
    shop.sales_hourly, shop.product_sales_daily, shop.customer_daily, shop.customer_weekly, shop.grade_history, shop.quarantine;
SELECT 'users' AS t, count(*) FROM shop.users UNION ALL SELECT 'orders', count(*) FROM shop.orders
UNION ALL SELECT 'order_items', count(*) FROM shop.order_items UNION ALL SELECT 'events', count(*) FROM shop.events;
