-- Retention by signup week for the eight weeks ending with the period:
-- the share of each week's sign-ups with a paid order k weeks later.
WITH weeks AS (
    SELECT ($2::timestamp - (k * interval '7 days'))::timestamp AS week_end, k
    FROM generate_series(1, 8) k
),
cohort AS (
    SELECT w.k, w.week_end - interval '7 days' AS week_start, u.id
    FROM weeks w JOIN shop.users u ON u.signup_at >= w.week_end - interval '7 days' AND u.signup_at < w.week_end
),
sizes AS (
    SELECT k, week_start, count(*) AS users FROM cohort GROUP BY k, week_start
),
-- Each customer once per week they bought in, then counted per week.
active AS (
    SELECT k, week_no, count(*) AS buyers
    FROM (
        SELECT DISTINCT c.k, c.id, floor(extract(epoch FROM o.ordered_at - c.week_start) / 604800)::int AS week_no
        FROM cohort c JOIN shop.orders o ON o.user_id = c.id AND o.status = 'paid'
            AND o.ordered_at >= c.week_start AND o.ordered_at < $2::timestamp
        -- The constant bound lets the planner read only these eight weeks.
        WHERE o.ordered_at >= $2::timestamp - interval '56 days'
    ) a
    GROUP BY k, week_no
),
shares AS (
    SELECT s.k, s.week_start, s.users, a.week_no, round(100.0 * coalesce(a.buyers, 0) / s.users, 1) AS pct
    FROM sizes s LEFT JOIN active a USING (k)
)
SELECT to_char(week_start, 'MM-DD') AS cohort,
       users,
       coalesce(max(pct) FILTER (WHERE week_no = 0), 0.0) AS w0,
       CASE WHEN k >= 2 THEN coalesce(max(pct) FILTER (WHERE week_no = 1), 0.0) END AS w1,
       CASE WHEN k >= 3 THEN coalesce(max(pct) FILTER (WHERE week_no = 2), 0.0) END AS w2,
       CASE WHEN k >= 4 THEN coalesce(max(pct) FILTER (WHERE week_no = 3), 0.0) END AS w3,
       CASE WHEN k >= 5 THEN coalesce(max(pct) FILTER (WHERE week_no = 4), 0.0) END AS w4,
       CASE WHEN k >= 6 THEN coalesce(max(pct) FILTER (WHERE week_no = 5), 0.0) END AS w5,
       CASE WHEN k >= 7 THEN coalesce(max(pct) FILTER (WHERE week_no = 6), 0.0) END AS w6,
       CASE WHEN k >= 8 THEN coalesce(max(pct) FILTER (WHERE week_no = 7), 0.0) END AS w7
FROM shares
GROUP BY k, week_start, users
ORDER BY week_start
