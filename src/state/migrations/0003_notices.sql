-- What became of the failure notice mailed after a task's last failed try
-- (sent, written to the outbox, or not sent and why): `sluice runs show`
-- prints it. A new try clears it.
ALTER TABLE task_instances ADD COLUMN notice text;
