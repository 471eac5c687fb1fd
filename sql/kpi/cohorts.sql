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
activity AS (
    SELECT c.k, c.week_start, c.id,
           floor(extract(epoch FROM o.ordered_at - c.week_start) / 604800)::int AS week_no
    FROM cohort c JOIN shop.orders o ON o.user_id = c.id AND o.status = 'paid'
        AND o.ordered_at >= c.week_start AND o.ordered_at < $2::timestamp
)
SELECT to_char(c.week_start, 'MM-DD') AS cohort,
       count(DISTINCT c.id) AS users,
       round(100.0 * count(DISTINCT a.id) FILTER (WHERE a.week_no = 0) / nullif(count(DISTINCT c.id), 0), 1) AS w0,
       CASE WHEN c.k >= 2 THEN round(100.0 * count(DISTINCT a.id) FILTER (WHERE a.week_no = 1) / nullif(count(DISTINCT c.id), 0), 1) END AS w1,
       CASE WHEN c.k >= 3 THEN round(100.0 * count(DISTINCT a.id) FILTER (WHERE a.week_no = 2) / nullif(count(DISTINCT c.id), 0), 1) END AS w2,
       CASE WHEN c.k >= 4 THEN round(100.0 * count(DISTINCT a.id) FILTER (WHERE a.week_no = 3) / nullif(count(DISTINCT c.id), 0), 1) END AS w3,
       CASE WHEN c.k >= 5 THEN round(100.0 * count(DISTINCT a.id) FILTER (WHERE a.week_no = 4) / nullif(count(DISTINCT c.id), 0), 1) END AS w4,
       CASE WHEN c.k >= 6 THEN round(100.0 * count(DISTINCT a.id) FILTER (WHERE a.week_no = 5) / nullif(count(DISTINCT c.id), 0), 1) END AS w5,
       CASE WHEN c.k >= 7 THEN round(100.0 * count(DISTINCT a.id) FILTER (WHERE a.week_no = 6) / nullif(count(DISTINCT c.id), 0), 1) END AS w6,
       CASE WHEN c.k >= 8 THEN round(100.0 * count(DISTINCT a.id) FILTER (WHERE a.week_no = 7) / nullif(count(DISTINCT c.id), 0), 1) END AS w7
FROM cohort c LEFT JOIN activity a ON a.id = c.id AND a.k = c.k
GROUP BY c.k, c.week_start
ORDER BY c.week_start
