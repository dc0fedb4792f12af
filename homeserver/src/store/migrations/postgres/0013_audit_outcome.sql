-- Admin actions are written to the audit log before they run, their outcome after: 'ok',
-- 'failed: <errcode>', or NULL when the request ended before the outcome was recorded (the
-- action may or may not have happened). Entries from before were written after success.
ALTER TABLE admin_audit ADD COLUMN outcome TEXT;
UPDATE admin_audit SET outcome = 'ok';
