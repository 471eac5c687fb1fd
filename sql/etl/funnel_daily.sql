-- The day's funnel ($1 = ds): sessions with at least one event of each
-- step, and the day's events. Recomputed from the day's events, so
-- rerunning a day changes nothing; the statements commit together.
DELETE FROM shop.funnel_daily WHERE day = $1::date;

INSERT INTO shop.funnel_daily (day, stage, sessions)
SELECT $1::date, e.event, count(DISTINCT e.session_id)
FROM shop.events e
WHERE e.ts >= ($1::date::timestamp AT TIME ZONE 'Asia/Seoul')
  AND e.ts < (($1::date + 1)::timestamp AT TIME ZONE 'Asia/Seoul')
GROUP BY e.event;

-- The day's events, which the report's data quality section counts.
INSERT INTO shop.events_daily (day, events)
SELECT $1::date, count(*)
FROM shop.events e
WHERE e.ts >= ($1::date::timestamp AT TIME ZONE 'Asia/Seoul')
  AND e.ts < (($1::date + 1)::timestamp AT TIME ZONE 'Asia/Seoul')
ON CONFLICT (day) DO UPDATE SET events = excluded.events;
