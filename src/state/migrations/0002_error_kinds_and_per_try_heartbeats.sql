-- The kind of a failed try's error (config, permanent, transient, failed,
-- timeout, internal): the retry decision reads it, and `sluice runs show`
-- shows it.
ALTER TABLE task_instances ADD COLUMN error_kind text;
ALTER TABLE task_tries ADD COLUMN error_kind text;
