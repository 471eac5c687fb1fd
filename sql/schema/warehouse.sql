-- The shop's warehouse, in schema `shop`. Idempotent: the ETL applies it
-- before every run. Times are Korea Standard Time wall-clock timestamps
-- (the exports' own), except event timestamps, which carry their offset.
-- Amounts are Korean won.

CREATE SCHEMA IF NOT EXISTS shop;

CREATE TABLE IF NOT EXISTS shop.users (
    id               bigint PRIMARY KEY,
    name             text NOT NULL,
    gender           text CHECK (gender IN ('M', 'F')),
    birth_date       date,
    region           text,
    signup_at        timestamp NOT NULL,
    marketing_opt_in boolean NOT NULL DEFAULT false,
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'dormant', 'withdrawn')),
    -- Maintained by the grade_update DAG, never by the ETL.
    grade            text NOT NULL DEFAULT 'BRONZE' CHECK (grade IN ('VIP', 'GOLD', 'SILVER', 'BRONZE')),
    grade_updated_at timestamp
);

CREATE TABLE IF NOT EXISTS shop.products (
    id          bigint PRIMARY KEY,
    name        text NOT NULL,
    category    text NOT NULL,
    price       numeric(12,0) NOT NULL CHECK (price >= 0),
    stock       integer NOT NULL DEFAULT 0,
    created_at  timestamp NOT NULL,
    -- Paid orders containing the product; refreshed by the ETL.
    order_count bigint NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS shop.orders (
    id             bigint PRIMARY KEY,
    user_id        bigint NOT NULL REFERENCES shop.users (id),
    ordered_at     timestamp NOT NULL,
    status         text NOT NULL CHECK (status IN ('paid', 'cancelled', 'refunded')),
    total_amount   numeric(14,0) NOT NULL CHECK (total_amount >= 0),
    item_count     integer NOT NULL CHECK (item_count > 0),
    payment_method text,
    channel        text NOT NULL DEFAULT 'direct'
);

-- `ordered_at` is repeated from the order so that a day's items can be
-- replaced by partition, like the orders.
CREATE TABLE IF NOT EXISTS shop.order_items (
    order_id   bigint NOT NULL REFERENCES shop.orders (id) ON DELETE CASCADE,
    line_no    integer NOT NULL,
    product_id bigint NOT NULL REFERENCES shop.products (id),
    quantity   integer NOT NULL CHECK (quantity > 0),
    unit_price numeric(12,0) NOT NULL CHECK (unit_price >= 0),
    ordered_at timestamp NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE IF NOT EXISTS shop.grade_history (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES shop.users (id),
    old_grade  text NOT NULL,
    new_grade  text NOT NULL,
    changed_at timestamp NOT NULL,
    reason     text NOT NULL CHECK (reason IN ('upgrade', 'downgrade')),
    spend_6m   numeric(14,0) NOT NULL,
    orders_6m  integer NOT NULL
);

-- The application's funnel events (visit, view, cart, purchase).
CREATE TABLE IF NOT EXISTS shop.events (
    ts         timestamptz NOT NULL,
    event      text NOT NULL CHECK (event IN ('visit', 'view', 'cart', 'purchase')),
    session_id text NOT NULL,
    user_id    bigint NOT NULL,
    product_id bigint,
    order_id   bigint
);

-- Sessions reaching each funnel step, per day (Korea time), kept by the ETL
-- from the day's events: the weekly report sums seven rows per step instead
-- of grouping millions of events by session. A session spanning midnight
-- counts on both days.
CREATE TABLE IF NOT EXISTS shop.funnel_daily (
    day      date NOT NULL,
    stage    text NOT NULL CHECK (stage IN ('visit', 'view', 'cart', 'purchase')),
    sessions bigint NOT NULL,
    PRIMARY KEY (day, stage)
);

-- Rows the ETL refused, with why: nothing is dropped silently.
CREATE TABLE IF NOT EXISTS shop.quarantine (
    ds       date NOT NULL,
    source   text NOT NULL,
    line     bigint,
    order_id bigint,
    reason   text NOT NULL,
    detail   text,
    record   text
);

-- What the KPI queries and the grade update read.
CREATE INDEX IF NOT EXISTS orders_ordered_at ON shop.orders (ordered_at);
CREATE INDEX IF NOT EXISTS orders_paid_window ON shop.orders (ordered_at) INCLUDE (user_id, total_amount) WHERE status = 'paid';
CREATE INDEX IF NOT EXISTS orders_user ON shop.orders (user_id, ordered_at);
-- The grade update sums paid orders per user in user order from this alone.
CREATE INDEX IF NOT EXISTS orders_paid_user ON shop.orders (user_id, ordered_at) INCLUDE (total_amount) WHERE status = 'paid';
CREATE INDEX IF NOT EXISTS order_items_ordered_at ON shop.order_items (ordered_at);
DROP INDEX IF EXISTS shop.order_items_product;
CREATE INDEX IF NOT EXISTS order_items_product_time ON shop.order_items (product_id, ordered_at);
CREATE INDEX IF NOT EXISTS users_signup_at ON shop.users (signup_at);
CREATE INDEX IF NOT EXISTS events_ts ON shop.events (ts);
CREATE INDEX IF NOT EXISTS grade_history_changed_at ON shop.grade_history (changed_at);
CREATE INDEX IF NOT EXISTS quarantine_ds ON shop.quarantine (ds);
CREATE INDEX IF NOT EXISTS products_created_at ON shop.products (created_at);

-- The report's definitions of a customer's grade and RFM segment at a point
-- in time, each written once and read by every query that shows them.

-- Grades at `at`, replayed from grade_history: the latest change before
-- `at`; BRONZE for a customer never graded; only customers signed up by then.
CREATE OR REPLACE FUNCTION shop.grades_at(at timestamp)
RETURNS TABLE (user_id bigint, grade text) LANGUAGE sql STABLE AS $$
    WITH latest AS (
        SELECT DISTINCT ON (h.user_id) h.user_id, h.new_grade
        FROM shop.grade_history h
        WHERE h.changed_at < at
        ORDER BY h.user_id, h.changed_at DESC, h.id DESC
    )
    SELECT u.id, coalesce(l.new_grade, 'BRONZE')
    FROM shop.users u LEFT JOIN latest l ON l.user_id = u.id
    WHERE u.signup_at < at
$$;

-- RFM scores and segments at `at`, of the customers with a paid order in
-- the 12 months before it.
--
-- Scores (1 to 5, 5 best) rank customers on recency (whole days since the
-- last paid order, fewer is better), frequency (paid orders) and monetary
-- value (paid revenue): a score is 1 + floor(5 x the share of customers
-- with a worse value), at most 5, so equal values get equal scores (in
-- integer arithmetic: rank() - 1 customers are worse, of count - 1 others).
-- FM is the mean of F and M, rounded half up.
--
-- The segments are the 11 of Putler's R x FM table ("RFM Analysis For
-- Successful Customer Segmentation", putler.com), made a partition of the
-- 5 x 5 grid, each cell inside the table's ranges for its segment:
--
--   R \ FM  1               2                    3                    4                5
--   5       New Customers   Potential Loyalists  Potential Loyalists  Champions        Champions
--   4       Promising       Potential Loyalists  Loyal                Champions        Champions
--   3       About to Sleep  Need Attention       Loyal                Loyal            Loyal
--   2       Hibernating     Hibernating          At Risk              At Risk          At Risk
--   1       Lost            Lost                 At Risk              Can't Lose Them  Can't Lose Them
CREATE OR REPLACE FUNCTION shop.rfm_at(at timestamp)
RETURNS TABLE (user_id bigint, recency_days int, frequency bigint, monetary numeric, r int, f int, m int, segment text)
LANGUAGE sql STABLE AS $$
    WITH c AS (
        SELECT o.user_id,
               floor(extract(epoch FROM at - max(o.ordered_at)) / 86400)::int AS recency_days,
               count(*) AS frequency,
               sum(o.total_amount) AS monetary
        FROM shop.orders o
        WHERE o.status = 'paid' AND o.ordered_at >= at - interval '365 days' AND o.ordered_at < at
        GROUP BY o.user_id
    ),
    s AS (
        SELECT c.*,
               least(5, 1 + 5 * (rank() OVER (ORDER BY c.recency_days DESC) - 1) / greatest(count(*) OVER () - 1, 1))::int AS r,
               least(5, 1 + 5 * (rank() OVER (ORDER BY c.frequency) - 1) / greatest(count(*) OVER () - 1, 1))::int AS f,
               least(5, 1 + 5 * (rank() OVER (ORDER BY c.monetary) - 1) / greatest(count(*) OVER () - 1, 1))::int AS m
        FROM c
    )
    SELECT s.user_id, s.recency_days, s.frequency, s.monetary, s.r, s.f, s.m,
           (ARRAY[
               ARRAY['Lost', 'Lost', 'At Risk', 'Can''t Lose Them', 'Can''t Lose Them'],
               ARRAY['Hibernating', 'Hibernating', 'At Risk', 'At Risk', 'At Risk'],
               ARRAY['About to Sleep', 'Need Attention', 'Loyal', 'Loyal', 'Loyal'],
               ARRAY['Promising', 'Potential Loyalists', 'Loyal', 'Champions', 'Champions'],
               ARRAY['New Customers', 'Potential Loyalists', 'Potential Loyalists', 'Champions', 'Champions']
           ])[s.r][floor((s.f + s.m) / 2.0 + 0.5)::int]
    FROM s
$$;
