-- Grades the customers from their paid orders in the window before $1, in
-- one transaction (aggregate, decide, update, log), so that the grade
-- changes and their history commit together.
--   $1 as-of time (KST wall clock)   $8 window in months
--   $2/$3 VIP spend/orders  $4/$5 GOLD  $6/$7 SILVER   (thresholds are DAG params)
-- Upgrades apply at once; a downgrade moves one step per update. A user
-- already graded at this as-of time is left alone, so a rerun of the same
-- interval changes nothing.
--
-- Which customers are graded. After a grading, every customer's grade is
-- the one their orders earn, except the customers in shop.grade_pending
-- (on their way down). Until the next grading, what a customer earns can
-- change only if
--   * one of their paid orders enters or leaves the window: it lies between
--     the two gradings' window starts or between their ends;
--   * their orders are inserted, changed or deleted (shop.grade_dirty, kept
--     by triggers on shop.orders), or their grade is set by other means
--     (triggers on shop.users).
-- So a grading looks at those customers and the pending ones only, and
-- decides exactly what grading every customer would. It grades everyone
-- instead on the first run, when the thresholds or the window change, when
-- the as-of time is more than a day from the last grading's (the customers
-- to look at would be most of them), and after shop.orders or shop.users
-- was truncated. shop.grade_state records which it did.
--
-- Needs the transaction (the sql task's default): the temporary tables
-- last until it ends.

-- Six months of paid orders are millions of rows; summing them per user
-- through the index orders_paid_user (read in user order, no heap access)
-- takes a third of the time of a hash table of a million groups, which the
-- planner would otherwise choose. Its join with a million users wants
-- more than the default 4 MB of sort memory; JIT only adds compile time.
SET LOCAL enable_hashagg = off;
SET LOCAL work_mem = '256MB';
SET LOCAL jit = off;
-- Tells the triggers on shop.users that these grade changes are the grading's own.
SET LOCAL shop.grading = 'on';

DO $$
BEGIN
    IF to_regclass('shop.grade_state') IS NULL THEN
        RAISE EXCEPTION 'the warehouse schema predates incremental grading (no table shop.grade_state)'
            USING HINT = 'apply sql/schema/warehouse.sql to the warehouse: any run of ecommerce_etl does';
    END IF;
END
$$;

-- One grading at a time.
LOCK TABLE shop.grade_state IN SHARE ROW EXCLUSIVE MODE;

CREATE TEMP TABLE grade_tick ON COMMIT DROP AS
SELECT $1::timestamp AS as_of,
       $1::timestamp - make_interval(months => $8::int) AS since,
       s.as_of AS last_as_of,
       s.as_of - make_interval(months => $8::int) AS last_since,
       s.as_of IS NULL OR s.thresholds <> t.thresholds
           OR abs(extract(epoch FROM $1::timestamp - s.as_of)) > 86400 AS everyone,
       t.thresholds
FROM (SELECT concat_ws(' ', $2::numeric, $3::int, $4::numeric, $5::int, $6::numeric, $7::int, $8::int) AS thresholds) t
LEFT JOIN shop.grade_state s ON true;

-- The customers whose grade can have changed (none when grading everyone).
-- A month's end can move the window's start back (31 August - 6 months is
-- 28 February, as is 30 August), hence least and greatest.
CREATE TEMP TABLE grade_candidates ON COMMIT DROP AS
SELECT user_id FROM shop.grade_pending WHERE NOT (SELECT everyone FROM grade_tick)
UNION
SELECT user_id FROM shop.grade_dirty WHERE NOT (SELECT everyone FROM grade_tick)
UNION
SELECT user_id FROM shop.orders
WHERE NOT (SELECT everyone FROM grade_tick) AND status = 'paid'
  AND ordered_at >= (SELECT least(since, last_since) FROM grade_tick)
  AND ordered_at < (SELECT greatest(since, last_since) FROM grade_tick)
UNION
SELECT user_id FROM shop.orders
WHERE NOT (SELECT everyone FROM grade_tick) AND status = 'paid'
  AND ordered_at >= (SELECT least(as_of, last_as_of) FROM grade_tick)
  AND ordered_at < (SELECT greatest(as_of, last_as_of) FROM grade_tick);
ANALYZE grade_candidates;

-- Marks taken. A mark committed before this statement is graded now: the
-- grading below reads the orders after it. A mark not yet committed is not
-- seen here and stays for the next grading. So a load never waits for a
-- grading, nor a grading for a load.
DELETE FROM shop.grade_dirty
WHERE (SELECT everyone FROM grade_tick) OR user_id IN (SELECT user_id FROM grade_candidates);
DELETE FROM shop.grade_pending
WHERE (SELECT everyone FROM grade_tick) OR user_id IN (SELECT user_id FROM grade_candidates);

INSERT INTO shop.grade_state (as_of, thresholds, everyone, candidates)
SELECT as_of, thresholds, everyone, CASE WHEN NOT everyone THEN (SELECT count(*) FROM grade_candidates) END
FROM grade_tick
ON CONFLICT (only_row) DO UPDATE
SET as_of = excluded.as_of, thresholds = excluded.thresholds, everyone = excluded.everyone, candidates = excluded.candidates;

-- Decide: each graded customer's spend and orders in the window, the grade
-- they earn, and their grade after this grading. Kept: the customers whose
-- grade changes or is not yet the one they earn (the rest need nothing
-- written; in a first grading, more than half of them).
CREATE TEMP TABLE grade_decided ON COMMIT DROP AS
WITH params AS (
    SELECT $1::timestamp AS as_of,
           $2::numeric AS vip_spend, $3::int AS vip_orders,
           $4::numeric AS gold_spend, $5::int AS gold_orders,
           $6::numeric AS silver_spend, $7::int AS silver_orders
),
spend AS (
    -- Everyone's window. The bounds are written out rather than read from
    -- `params`, so that the planner sees how much of the table it covers.
    SELECT o.user_id, sum(o.total_amount) AS spend_6m, count(*)::int AS orders_6m
    FROM shop.orders o
    WHERE (SELECT everyone FROM grade_tick)
      AND o.status = 'paid'
      AND o.ordered_at >= $1::timestamp - make_interval(months => $8::int)
      AND o.ordered_at < $1::timestamp
    GROUP BY o.user_id
    UNION ALL
    -- The candidates' windows, each from the same index.
    SELECT c.user_id, s.spend_6m, s.orders_6m
    FROM grade_candidates c
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(o.total_amount), 0) AS spend_6m, count(*)::int AS orders_6m
        FROM shop.orders o
        WHERE o.user_id = c.user_id
          AND o.status = 'paid'
          AND o.ordered_at >= $1::timestamp - make_interval(months => $8::int)
          AND o.ordered_at < $1::timestamp
    ) s
),
graded AS (
    SELECT u.id, u.grade, u.grade_updated_at FROM shop.users u WHERE (SELECT everyone FROM grade_tick)
    UNION ALL
    SELECT u.id, u.grade, u.grade_updated_at FROM grade_candidates c JOIN shop.users u ON u.id = c.user_id
),
earned AS (
    SELECT u.id, u.grade AS old_grade, u.grade_updated_at IS DISTINCT FROM p.as_of AS gradable,
           coalesce(s.spend_6m, 0) AS spend_6m, coalesce(s.orders_6m, 0) AS orders_6m,
           CASE WHEN coalesce(s.spend_6m, 0) >= p.vip_spend AND coalesce(s.orders_6m, 0) >= p.vip_orders THEN 4
                WHEN coalesce(s.spend_6m, 0) >= p.gold_spend AND coalesce(s.orders_6m, 0) >= p.gold_orders THEN 3
                WHEN coalesce(s.spend_6m, 0) >= p.silver_spend AND coalesce(s.orders_6m, 0) >= p.silver_orders THEN 2
                ELSE 1 END AS earned_rank,
           array_position(ARRAY['BRONZE', 'SILVER', 'GOLD', 'VIP'], u.grade) AS old_rank
    FROM graded u
    CROSS JOIN params p
    LEFT JOIN spend s ON s.user_id = u.id
    -- Computed once per customer: without the fence the planner writes
    -- earned_rank into the final filter several times over (numeric
    -- comparisons for each of a million customers; a fifth of a first
    -- grading's deciding).
    OFFSET 0
)
SELECT id, old_grade, spend_6m, orders_6m, earned_rank > old_rank AS upgrade, new_rank,
       new_rank <> old_rank AS changes, new_rank <> earned_rank AS pending
FROM (
    SELECT *, CASE WHEN NOT gradable THEN old_rank
                   WHEN earned_rank > old_rank THEN earned_rank
                   WHEN earned_rank < old_rank THEN old_rank - 1
                   ELSE old_rank END AS new_rank
    FROM earned
) e
WHERE new_rank <> old_rank OR new_rank <> earned_rank;
-- So that applying a tick's few changes reads users by key, not all of them.
ANALYZE grade_decided;

INSERT INTO shop.grade_pending (user_id)
SELECT id FROM grade_decided WHERE pending;

-- Apply and log.
WITH changed AS (
    UPDATE shop.users u
    SET grade = (ARRAY['BRONZE', 'SILVER', 'GOLD', 'VIP'])[d.new_rank],
        grade_updated_at = $1::timestamp
    FROM grade_decided d
    WHERE u.id = d.id AND d.changes
    RETURNING u.id, d.old_grade, u.grade AS new_grade, d.upgrade, d.spend_6m, d.orders_6m
)
INSERT INTO shop.grade_history (user_id, old_grade, new_grade, changed_at, reason, spend_6m, orders_6m)
SELECT id, old_grade, new_grade, $1::timestamp,
       CASE WHEN upgrade THEN 'upgrade' ELSE 'downgrade' END, spend_6m, orders_6m
FROM changed;
