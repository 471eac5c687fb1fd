-- Customers by grade now, and this period's upgrades and downgrades into each grade.
SELECT g.grade,
       (SELECT count(*) FROM shop.users u WHERE u.grade = g.grade) AS customers,
       (SELECT count(*) FROM shop.grade_history h WHERE h.new_grade = g.grade AND h.reason = 'upgrade'
          AND h.changed_at >= $1::timestamp AND h.changed_at < $2::timestamp) AS upgrades,
       (SELECT count(*) FROM shop.grade_history h WHERE h.new_grade = g.grade AND h.reason = 'downgrade'
          AND h.changed_at >= $1::timestamp AND h.changed_at < $2::timestamp) AS downgrades
FROM (VALUES ('VIP', 1), ('GOLD', 2), ('SILVER', 3), ('BRONZE', 4)) AS g(grade, i)
ORDER BY g.i
