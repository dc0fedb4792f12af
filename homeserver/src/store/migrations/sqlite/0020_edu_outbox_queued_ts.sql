-- When each waiting EDU was queued (issue 15): typing notifications older than their
-- lifetime are dropped instead of being sent late after an outage.
ALTER TABLE federation_edu_outbox ADD COLUMN queued_ts BIGINT NOT NULL DEFAULT 0;
