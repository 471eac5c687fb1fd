-- The web UI's users (argon2 password hashes) and the key that signs its
-- session cookies and CSRF tokens (one row, made by the first web server).
CREATE TABLE users (
    name           text PRIMARY KEY,
    role           text NOT NULL CHECK (role IN ('admin', 'viewer')),
    password_hash  text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE web_keys (
    id   int PRIMARY KEY CHECK (id = 1),
    key  bytea NOT NULL
);
