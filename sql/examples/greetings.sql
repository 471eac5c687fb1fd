-- Upserts the day's greeting. $1 = ds, $2 = greeting: bind parameters, not
-- string interpolation.
CREATE SCHEMA IF NOT EXISTS example;
CREATE TABLE IF NOT EXISTS example.daily_greetings (
    ds         date PRIMARY KEY,
    greeting   text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO example.daily_greetings (ds, greeting) VALUES ($1::date, $2)
ON CONFLICT (ds) DO UPDATE SET greeting = EXCLUDED.greeting, updated_at = now();
