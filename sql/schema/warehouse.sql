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
-- The grading rewrites a customer's row whenever their grade changes (a
-- first grading, nearly half of them). With room left on each page, the
-- new version stays on its page (a HOT update) and no index changes (a
-- first grading of a million customers, 45 % of them changed, wrote them
-- in 4.6 s instead of 6.2).
) WITH (fillfactor = 70);

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

-- Every grade change, written by the grading in the transaction that makes
-- it. A log, so no foreign key to shop.users: the grading takes each row's
-- user from the update of that user it has just made (a key checked row by
-- row took 2.5 s of a first grading's 13), and a deleted customer's history
-- stays history.
CREATE TABLE IF NOT EXISTS shop.grade_history (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL,
    old_grade  text NOT NULL,
    new_grade  text NOT NULL,
    changed_at timestamp NOT NULL,
    reason     text NOT NULL CHECK (reason IN ('upgrade', 'downgrade')),
    spend_6m   numeric(14,0) NOT NULL,
    orders_6m  integer NOT NULL
);

-- Warehouses made before the two choices above. Checked first, so that
-- applying this file takes no lock on the tables once they are done; a
-- fill factor set by hand is kept, and so is a key added by hand under
-- another name.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_class, unnest(reloptions) o
                   WHERE oid = 'shop.users'::regclass AND o LIKE 'fillfactor=%') THEN
        ALTER TABLE shop.users SET (fillfactor = 70);
    END IF;
    IF EXISTS (SELECT FROM pg_constraint
               WHERE conrelid = 'shop.grade_history'::regclass AND conname = 'grade_history_user_id_fkey') THEN
        ALTER TABLE shop.grade_history DROP CONSTRAINT grade_history_user_id_fkey;
    END IF;
END
$$;

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

-- Events per day (Korea time), kept by the ETL with the funnel
-- (sql/etl/funnel_daily.sql): the weekly report's data quality section sums
-- seven rows instead of counting a busy week's millions of events.
CREATE TABLE IF NOT EXISTS shop.events_daily (
    day    date PRIMARY KEY,
    events bigint NOT NULL
);

-- Daily aggregates of the orders, kept by the ETL for each day it loads
-- (shop.refresh_daily, below, called by sql/etl/daily_aggregates.sql): the
-- weekly report sums a few thousand of these rows instead of grouping every
-- order and order line of a busy week. A day's rows are recomputed from its
-- orders, so reloading a day rebuilds them. Days are Korea time, like
-- `ordered_at`; the report's periods are whole days.

-- Orders per hour: all of them, paid ones and their revenue, cancelled or
-- refunded ones, and the order lines of all of them.
CREATE TABLE IF NOT EXISTS shop.sales_hourly (
    day              date NOT NULL,
    hour             smallint NOT NULL CHECK (hour BETWEEN 0 AND 23),
    orders           integer NOT NULL,
    paid_orders      integer NOT NULL,
    paid_revenue     bigint NOT NULL,
    cancelled_orders integer NOT NULL,
    lines            integer NOT NULL,
    PRIMARY KEY (day, hour)
);

-- Each product's paid units and revenue per day (lines of paid orders).
CREATE TABLE IF NOT EXISTS shop.product_sales_daily (
    day        date NOT NULL,
    product_id bigint NOT NULL,
    units      integer NOT NULL,
    revenue    bigint NOT NULL,
    PRIMARY KEY (day, product_id)
);

-- Each customer's paid orders per day, with their revenue and the time of
-- the day's last one (recency, to the second).
CREATE TABLE IF NOT EXISTS shop.customer_daily (
    day          date NOT NULL,
    user_id      bigint NOT NULL,
    paid_orders  integer NOT NULL,
    paid_revenue bigint NOT NULL,
    last_paid_at timestamp NOT NULL,
    PRIMARY KEY (day, user_id)
);

-- The same by week (Monday to Sunday), kept from shop.customer_daily: what
-- a report over months reads instead of every day, through
-- shop.customer_spans (below). `days` counts the week's days with a paid
-- order, `first_day` is the first of them and `first_revenue` its revenue.
CREATE TABLE IF NOT EXISTS shop.customer_weekly (
    week          date NOT NULL CHECK (extract(isodow FROM week) = 1),
    user_id       bigint NOT NULL,
    days          integer NOT NULL,
    paid_orders   integer NOT NULL,
    paid_revenue  bigint NOT NULL,
    first_day     date NOT NULL,
    first_revenue bigint NOT NULL,
    last_paid_at  timestamp NOT NULL,
    PRIMARY KEY (week, user_id)
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
-- A customer's days in order, with what the report sums (no heap access).
CREATE INDEX IF NOT EXISTS customer_daily_user ON shop.customer_daily (user_id, day) INCLUDE (paid_orders, paid_revenue, last_paid_at);

-- The Monday starting the week of `d` (ISO weeks, as the weekly report's).
CREATE OR REPLACE FUNCTION shop.week_of(d date) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT d - (extract(isodow FROM d)::int - 1)
$$;

-- Recomputes shop.customer_weekly for the weeks starting first_week..last_week
-- (Mondays) from shop.customer_daily.
CREATE OR REPLACE FUNCTION shop.refresh_weekly(first_week date, last_week date)
RETURNS void LANGUAGE sql AS $$
    DELETE FROM shop.customer_weekly WHERE week BETWEEN first_week AND last_week;
    INSERT INTO shop.customer_weekly (week, user_id, days, paid_orders, paid_revenue, first_day, first_revenue, last_paid_at)
    SELECT shop.week_of(day), user_id, count(*), sum(paid_orders), sum(paid_revenue),
           min(day), (min(ARRAY[day - date '2000-01-01', paid_revenue]))[2], max(last_paid_at)
    FROM shop.customer_daily
    WHERE day >= first_week AND day < last_week + 7
    GROUP BY 1, 2;
$$;

-- Recomputes the daily aggregates of the days first_day..last_day from the orders
-- and order lines: what the ETL calls after loading a day, in the load's
-- run, and what rebuilds every day of an older warehouse (below).
CREATE OR REPLACE FUNCTION shop.refresh_daily(first_day date, last_day date)
RETURNS void LANGUAGE sql AS $$
    DELETE FROM shop.sales_hourly WHERE day BETWEEN first_day AND last_day;
    INSERT INTO shop.sales_hourly (day, hour, orders, paid_orders, paid_revenue, cancelled_orders, lines)
    SELECT coalesce(o.day, l.day), coalesce(o.hour, l.hour), coalesce(o.orders, 0), coalesce(o.paid_orders, 0),
           coalesce(o.paid_revenue, 0), coalesce(o.cancelled_orders, 0), coalesce(l.lines, 0)
    FROM (
        SELECT ordered_at::date AS day, extract(hour FROM ordered_at)::smallint AS hour, count(*) AS orders,
               count(*) FILTER (WHERE status = 'paid') AS paid_orders,
               coalesce(sum(total_amount) FILTER (WHERE status = 'paid'), 0) AS paid_revenue,
               count(*) FILTER (WHERE status IN ('cancelled', 'refunded')) AS cancelled_orders
        FROM shop.orders
        WHERE ordered_at >= first_day AND ordered_at < last_day + 1
        GROUP BY 1, 2
    ) o
    FULL JOIN (
        SELECT ordered_at::date AS day, extract(hour FROM ordered_at)::smallint AS hour, count(*) AS lines
        FROM shop.order_items
        WHERE ordered_at >= first_day AND ordered_at < last_day + 1
        GROUP BY 1, 2
    ) l ON l.day = o.day AND l.hour = o.hour;

    DELETE FROM shop.product_sales_daily WHERE day BETWEEN first_day AND last_day;
    INSERT INTO shop.product_sales_daily (day, product_id, units, revenue)
    SELECT i.ordered_at::date, i.product_id, sum(i.quantity), sum(i.quantity * i.unit_price)
    FROM shop.order_items i
    JOIN shop.orders o ON o.id = i.order_id AND o.status = 'paid'
    WHERE i.ordered_at >= first_day AND i.ordered_at < last_day + 1
    GROUP BY 1, 2;

    DELETE FROM shop.customer_daily WHERE day BETWEEN first_day AND last_day;
    INSERT INTO shop.customer_daily (day, user_id, paid_orders, paid_revenue, last_paid_at)
    SELECT ordered_at::date, user_id, count(*), sum(total_amount), max(ordered_at)
    FROM shop.orders
    WHERE status = 'paid' AND ordered_at >= first_day AND ordered_at < last_day + 1
    GROUP BY 1, 2;

    -- The weeks of those days, whole, from the days just written.
    SELECT shop.refresh_weekly(shop.week_of(first_day), shop.week_of(last_day));
$$;

-- A warehouse loaded before the daily aggregates existed gets them for
-- every day it holds, once (an empty shop.sales_hourly next to orders, an
-- empty shop.events_daily next to events).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM shop.sales_hourly) AND EXISTS (SELECT 1 FROM shop.orders) THEN
        PERFORM shop.refresh_daily(min(ordered_at)::date, max(ordered_at)::date) FROM shop.orders;
    END IF;
    -- The customers' weeks, added after the days: built from the days.
    IF NOT EXISTS (SELECT 1 FROM shop.customer_weekly) AND EXISTS (SELECT 1 FROM shop.customer_daily) THEN
        PERFORM shop.refresh_weekly(shop.week_of(min(day)), shop.week_of(max(day))) FROM shop.customer_daily;
    END IF;
    -- The same for the events' daily counts (a day the ETL writes meanwhile
    -- keeps its own count).
    IF NOT EXISTS (SELECT 1 FROM shop.events_daily) AND EXISTS (SELECT 1 FROM shop.events) THEN
        INSERT INTO shop.events_daily (day, events)
        SELECT (ts AT TIME ZONE 'Asia/Seoul')::date, count(*) FROM shop.events GROUP BY 1
        ON CONFLICT (day) DO NOTHING;
    END IF;
END
$$;

-- What lets the grade update (sql/grades/update_grades.sql) grade only the
-- customers whose grade can have changed since its last grading, instead
-- of every customer every ten minutes.
--
-- The last grading: its as-of time and its thresholds and window, and
-- whether it graded everyone or only the customers named below.
CREATE TABLE IF NOT EXISTS shop.grade_state (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    as_of      timestamp NOT NULL,
    thresholds text NOT NULL,
    everyone   boolean NOT NULL,
    -- How many customers a grading of the changed ones looked at.
    candidates integer
);
-- Customers whose orders were inserted, changed or deleted, or whose grade
-- was set by other means than the grade update, since the last grading:
-- one row per customer and writing statement, added by the triggers below
-- and deleted by the grading that reads them. Only ever inserted, never
-- updated, so that a load and a grading never wait for each other: a mark
-- a load has not committed yet stays for the next grading.
CREATE TABLE IF NOT EXISTS shop.grade_dirty (user_id bigint NOT NULL);
CREATE INDEX IF NOT EXISTS grade_dirty_user ON shop.grade_dirty (user_id);
-- Customers whose grade has not yet come down to the one their orders earn
-- (a downgrade moves one step per grading).
CREATE TABLE IF NOT EXISTS shop.grade_pending (user_id bigint PRIMARY KEY);

-- The triggers' functions run as the schema's owner (SECURITY DEFINER): a
-- role that may write shop.orders or shop.users needs no grant on these.
--
-- The customers of the orders a statement inserted, updated or deleted
-- (COPY and the loads' DELETE of a day included), once per statement.
CREATE OR REPLACE FUNCTION shop.grade_dirty_orders() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO shop.grade_dirty SELECT DISTINCT user_id FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO shop.grade_dirty SELECT DISTINCT user_id FROM old_rows;
    ELSE
        INSERT INTO shop.grade_dirty SELECT user_id FROM old_rows UNION SELECT user_id FROM new_rows;
    END IF;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER orders_inserted_grade_dirty AFTER INSERT ON shop.orders
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION shop.grade_dirty_orders();
CREATE OR REPLACE TRIGGER orders_updated_grade_dirty AFTER UPDATE ON shop.orders
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION shop.grade_dirty_orders();
CREATE OR REPLACE TRIGGER orders_deleted_grade_dirty AFTER DELETE ON shop.orders
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION shop.grade_dirty_orders();

-- A customer inserted with a grade, or whose grade is set by hand. The
-- grade update's own changes (`shop.grading` set) are not.
CREATE OR REPLACE FUNCTION shop.grade_dirty_user() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO shop.grade_dirty VALUES (NEW.id);
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER users_inserted_grade_dirty AFTER INSERT ON shop.users
    FOR EACH ROW WHEN (NEW.grade <> 'BRONZE') EXECUTE FUNCTION shop.grade_dirty_user();
CREATE OR REPLACE TRIGGER users_graded_grade_dirty AFTER UPDATE OF grade ON shop.users
    FOR EACH ROW WHEN (OLD.grade IS DISTINCT FROM NEW.grade AND current_setting('shop.grading', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION shop.grade_dirty_user();

-- A truncated table leaves nothing to compare with: the next grading
-- grades everyone.
CREATE OR REPLACE FUNCTION shop.grade_forget() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    DELETE FROM shop.grade_state;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER orders_truncated_grade_forget AFTER TRUNCATE ON shop.orders
    FOR EACH STATEMENT EXECUTE FUNCTION shop.grade_forget();
CREATE OR REPLACE TRIGGER users_truncated_grade_forget AFTER TRUNCATE ON shop.users
    FOR EACH STATEMENT EXECUTE FUNCTION shop.grade_forget();

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

-- Each customer's paid days in [lo, hi) in as few rows as the days allow:
-- a whole week (Monday to Sunday) as one row of shop.customer_weekly, and
-- each day of a week that a bound or one of the `cuts` splits as a row of
-- shop.customer_daily. No row spans a cut, so a query can tell each row's
-- side of a cut from its first_day; summing the rows gives what summing
-- the days gives. A report over months reads a week of a busy customer as
-- one row instead of up to seven.
CREATE OR REPLACE FUNCTION shop.customer_spans(lo date, hi date, cuts date[] DEFAULT '{}')
RETURNS TABLE (user_id bigint, first_day date, last_day date, days integer, paid_orders integer,
               paid_revenue bigint, first_revenue bigint, last_paid_at timestamp)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT w.user_id, w.first_day, w.last_paid_at::date, w.days, w.paid_orders, w.paid_revenue, w.first_revenue, w.last_paid_at
    FROM shop.customer_weekly w
    WHERE w.week >= lo AND w.week <= hi - 7
      AND w.week <> ALL (ARRAY(SELECT shop.week_of(c) FROM unnest(cuts) c WHERE shop.week_of(c) <> c))
    UNION ALL
    -- The other days in [lo, hi): those of lo's week after lo, of hi's week
    -- before hi, and of a cut's week (none when the bound or cut is a Monday).
    SELECT d.user_id, d.day, d.day, 1, d.paid_orders, d.paid_revenue, d.paid_revenue, d.last_paid_at
    FROM shop.customer_daily d
    WHERE d.day >= lo AND d.day < hi
      AND (d.day < CASE WHEN shop.week_of(lo) = lo THEN lo ELSE shop.week_of(lo) + 7 END
           OR d.day >= shop.week_of(hi)
           OR d.day = ANY (ARRAY(SELECT shop.week_of(c) + i FROM unnest(cuts) c, generate_series(0, 6) i
                                 WHERE shop.week_of(c) <> c)))
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
--
-- shop.rfm_score and shop.rfm_segment are the two rules; sql/kpi/clv.sql
-- applies them too, in its own pass over the daily aggregates.
CREATE OR REPLACE FUNCTION shop.rfm_score(worse_plus_one bigint, customers bigint) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT least(5, 1 + 5 * (worse_plus_one - 1) / greatest(customers - 1, 1))::int
$$;

CREATE OR REPLACE FUNCTION shop.rfm_segment(r int, f int, m int) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (ARRAY[
        ARRAY['Lost', 'Lost', 'At Risk', 'Can''t Lose Them', 'Can''t Lose Them'],
        ARRAY['Hibernating', 'Hibernating', 'At Risk', 'At Risk', 'At Risk'],
        ARRAY['About to Sleep', 'Need Attention', 'Loyal', 'Loyal', 'Loyal'],
        ARRAY['Promising', 'Potential Loyalists', 'Loyal', 'Champions', 'Champions'],
        ARRAY['New Customers', 'Potential Loyalists', 'Potential Loyalists', 'Champions', 'Champions']
    ])[r][floor((f + m) / 2.0 + 0.5)::int]
$$;

CREATE OR REPLACE FUNCTION shop.rfm_at(at timestamp)
RETURNS TABLE (user_id bigint, recency_days int, frequency bigint, monetary numeric, r int, f int, m int, segment text)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    -- It reads the daily aggregates, so `at` must start a day.
    IF at <> date_trunc('day', at) THEN
        RAISE EXCEPTION 'shop.rfm_at(%): the time must be the start of a day (it reads the daily aggregates)', at;
    END IF;
    RETURN QUERY
    WITH c AS (
        SELECT d.user_id,
               floor(extract(epoch FROM at - max(d.last_paid_at)) / 86400)::int AS recency_days,
               sum(d.paid_orders)::bigint AS frequency,
               sum(d.paid_revenue) AS monetary
        FROM shop.customer_spans((at - interval '365 days')::date, at::date) d
        GROUP BY d.user_id
    ),
    -- rank() by recency or by frequency is 1 + the customers before the
    -- value: counted per value (a few hundred of them) rather than by
    -- sorting every customer (the columns are never NULL). Revenue has
    -- nearly as many values as customers, so it is ranked by sorting.
    by_recency AS (
        SELECT c.recency_days,
               sum(count(*)) OVER (ORDER BY c.recency_days DESC) - count(*) + 1 AS worse_plus_one
        FROM c GROUP BY c.recency_days
    ),
    by_frequency AS (
        SELECT c.frequency,
               sum(count(*)) OVER (ORDER BY c.frequency) - count(*) + 1 AS worse_plus_one
        FROM c GROUP BY c.frequency
    ),
    s AS (
        SELECT c.*,
               shop.rfm_score(br.worse_plus_one::bigint, k.n) AS r,
               shop.rfm_score(bf.worse_plus_one::bigint, k.n) AS f,
               shop.rfm_score(rank() OVER (ORDER BY c.monetary), k.n) AS m
        FROM c
        JOIN by_recency br ON br.recency_days = c.recency_days
        JOIN by_frequency bf ON bf.frequency = c.frequency
        CROSS JOIN (SELECT count(*) AS n FROM c) k
    )
    SELECT s.user_id, s.recency_days, s.frequency, s.monetary, s.r, s.f, s.m, shop.rfm_segment(s.r, s.f, s.m)
    FROM s;
END
$$;
