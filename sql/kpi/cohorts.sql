-- Purchases by signup week: for each of the eight signup weeks ending with
-- the period (the period's own week last), the share of its sign-ups with
-- a paid order in each week since signup. W0 is the signup week itself
-- (a first purchase); a week that has not happened yet is left empty.
WITH weeks AS (
    SELECT k, $2::timestamp - ((k + 1) * interval '7 days') AS week_start, $2::timestamp - (k * interval '7 days') AS week_end
    FROM generate_series(0, 7) k
),
-- Each sign-up of the eight weeks in its week k (read as one range of
-- users, which the planner sizes right).
cohort AS (
    SELECT w.k, w.week_start, u.id
    FROM shop.users u
    JOIN weeks w ON w.k = ceil(extract(epoch FROM $2::timestamp - u.signup_at) / 604800)::int - 1
    WHERE u.signup_at >= $2::timestamp - interval '56 days' AND u.signup_at < $2::timestamp
),
sizes AS (
    SELECT w.k, w.week_start, count(c.id) AS users
    FROM weeks w LEFT JOIN cohort c USING (k)
    GROUP BY w.k, w.week_start
),
-- Each customer once per week they bought in, then counted per week.
active AS (
    SELECT k, week_no, count(*) AS buyers
    FROM (
        SELECT DISTINCT c.k, c.id, floor((d.day - c.week_start::date) / 7.0)::int AS week_no
        FROM cohort c JOIN shop.customer_daily d ON d.user_id = c.id
            AND d.day >= c.week_start::date AND d.day < $2::date
        -- The constant bound (the oldest cohort's start) lets the planner
        -- read only these eight weeks.
        WHERE d.day >= $2::date - 56
    ) a
    GROUP BY k, week_no
),
shares AS (
    SELECT s.k, s.week_start, s.users, a.week_no, round(100.0 * coalesce(a.buyers, 0) / nullif(s.users, 0), 1) AS pct
    FROM sizes s LEFT JOIN active a USING (k)
)
SELECT to_char(week_start, 'MM-DD') AS cohort,
       users,
       CASE WHEN users > 0 THEN coalesce(max(pct) FILTER (WHERE week_no = 0), 0.0) END AS w0,
       CASE WHEN k >= 1 AND users > 0 THEN coalesce(max(pct) FILTER (WHERE week_no = 1), 0.0) END AS w1,
       CASE WHEN k >= 2 AND users > 0 THEN coalesce(max(pct) FILTER (WHERE week_no = 2), 0.0) END AS w2,
       CASE WHEN k >= 3 AND users > 0 THEN coalesce(max(pct) FILTER (WHERE week_no = 3), 0.0) END AS w3,
       CASE WHEN k >= 4 AND users > 0 THEN coalesce(max(pct) FILTER (WHERE week_no = 4), 0.0) END AS w4,
       CASE WHEN k >= 5 AND users > 0 THEN coalesce(max(pct) FILTER (WHERE week_no = 5), 0.0) END AS w5,
       CASE WHEN k >= 6 AND users > 0 THEN coalesce(max(pct) FILTER (WHERE week_no = 6), 0.0) END AS w6,
       CASE WHEN k >= 7 AND users > 0 THEN coalesce(max(pct) FILTER (WHERE week_no = 7), 0.0) END AS w7
FROM shares
GROUP BY k, week_start, users
ORDER BY week_start
