-- The kind of a failed try's error (config, permanent, transient, failed,
-- timeout, internal): the retry decision reads it, and `sluice runs show`
-- shows it.
ALTER TABLE task_instances ADD COLUMN error_kind text;
ALTER TABLE task_tries ADD COLUMN error_kind text;

-- Tries lost with their worker (killed, crashed, stopped heartbeating) are
-- requeued without using a retry, up to a budget counted here; `clear`
-- resets it.
ALTER TABLE task_instances ADD COLUMN worker_failures int NOT NULL DEFAULT 0;
