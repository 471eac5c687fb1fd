-- Task tries in the period, by DAG and outcome (read from the state store).
SELECT r.dag_id,
       count(*) FILTER (WHERE t.state = 'success') AS succeeded,
       count(*) FILTER (WHERE t.state = 'failed') AS failed_tries,
       count(DISTINCT r.run_id) AS runs
FROM dag_runs r JOIN task_tries t ON t.run_id = r.run_id
WHERE r.logical_date >= $1::timestamp AT TIME ZONE 'Asia/Seoul' AND r.logical_date < $2::timestamp AT TIME ZONE 'Asia/Seoul'
GROUP BY r.dag_id
ORDER BY r.dag_id
