SELECT 'a' AS segment
