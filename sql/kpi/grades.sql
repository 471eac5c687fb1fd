-- Customers by grade at the end of the period (shop.grades_at replays
-- shop.grade_history: a report of a past week shows that week, not today),
-- and the period's upgrades and downgrades into each grade.
WITH as_of AS (
    SELECT grade, count(*) AS customers FROM shop.grades_at($2::timestamp) GROUP BY grade
),
moves AS (
    SELECT new_grade AS grade,
           count(*) FILTER (WHERE reason = 'upgrade') AS upgrades,
           count(*) FILTER (WHERE reason = 'downgrade') AS downgrades
    FROM shop.grade_history
    WHERE changed_at >= $1::timestamp AND changed_at < $2::timestamp
    GROUP BY 1
)
SELECT g.grade, coalesce(a.customers, 0) AS customers, coalesce(m.upgrades, 0) AS upgrades, coalesce(m.downgrades, 0) AS downgrades
FROM (VALUES ('VIP', 1), ('GOLD', 2), ('SILVER', 3), ('BRONZE', 4)) AS g(grade, i)
LEFT JOIN as_of a USING (grade)
LEFT JOIN moves m USING (grade)
ORDER BY g.i
