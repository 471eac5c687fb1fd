SELECT 0 AS frequency, 0 AS recency, 1 AS age, 0 AS monetary, 0 AS historical, 'x' AS segment
