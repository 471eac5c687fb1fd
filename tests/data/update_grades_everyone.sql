-- The grade update as it was before it graded only the changed customers:
-- every customer, every time. The incremental grading must decide exactly
-- what this does (tests/integration/shop.rs). A frozen copy, on the
-- reference tables of schema `ref` (ref.orders is a view of shop.orders;
-- ref.users and ref.grade_history are the reference's own). The test puts
-- literal values in place of $1..$8.
WITH params AS (
    SELECT $1::timestamp AS as_of,
           $1::timestamp - make_interval(months => $8::int) AS since,
           $2::numeric AS vip_spend, $3::int AS vip_orders,
           $4::numeric AS gold_spend, $5::int AS gold_orders,
           $6::numeric AS silver_spend, $7::int AS silver_orders
),
spend AS (
    SELECT o.user_id, sum(o.total_amount) AS spend_6m, count(*)::int AS orders_6m
    FROM ref.orders o
    -- The bounds are written out rather than read from `params`, so that
    -- the planner sees how much of the table the window covers.
    WHERE o.status = 'paid'
      AND o.ordered_at >= $1::timestamp - make_interval(months => $8::int)
      AND o.ordered_at < $1::timestamp
    GROUP BY o.user_id
),
earned AS (
    SELECT u.id, u.grade AS old_grade,
           coalesce(s.spend_6m, 0) AS spend_6m, coalesce(s.orders_6m, 0) AS orders_6m,
           CASE WHEN coalesce(s.spend_6m, 0) >= p.vip_spend AND coalesce(s.orders_6m, 0) >= p.vip_orders THEN 4
                WHEN coalesce(s.spend_6m, 0) >= p.gold_spend AND coalesce(s.orders_6m, 0) >= p.gold_orders THEN 3
                WHEN coalesce(s.spend_6m, 0) >= p.silver_spend AND coalesce(s.orders_6m, 0) >= p.silver_orders THEN 2
                ELSE 1 END AS earned_rank,
           array_position(ARRAY['BRONZE', 'SILVER', 'GOLD', 'VIP'], u.grade) AS old_rank
    FROM ref.users u
    CROSS JOIN params p
    LEFT JOIN spend s ON s.user_id = u.id
    WHERE u.grade_updated_at IS DISTINCT FROM p.as_of
),
decided AS (
    SELECT id, old_grade, spend_6m, orders_6m, earned_rank > old_rank AS upgrade,
           CASE WHEN earned_rank > old_rank THEN earned_rank
                WHEN earned_rank < old_rank THEN old_rank - 1
                ELSE old_rank END AS new_rank,
           old_rank
    FROM earned
),
changed AS (
    UPDATE ref.users u
    SET grade = (ARRAY['BRONZE', 'SILVER', 'GOLD', 'VIP'])[d.new_rank],
        grade_updated_at = (SELECT as_of FROM params)
    FROM decided d
    WHERE u.id = d.id AND d.new_rank <> d.old_rank
    RETURNING u.id, d.old_grade, u.grade AS new_grade, d.upgrade, d.spend_6m, d.orders_6m
)
INSERT INTO ref.grade_history (user_id, old_grade, new_grade, changed_at, reason, spend_6m, orders_6m)
SELECT id, old_grade, new_grade, (SELECT as_of FROM params),
       CASE WHEN upgrade THEN 'upgrade' ELSE 'downgrade' END, spend_6m, orders_6m
FROM changed;
