-- Owner: projector (`chat` projection). A due scheduled message that was not delivered
-- (`ScheduleFailed`: its author can no longer write in the thread, or its delivery kept
-- failing) has status `failed`, with why (`failure_code` `author_unavailable` or
-- `delivery_failed`, `failure` for people) and when; staff reschedule it (back to
-- `pending`) or cancel it. Status is now pending | delivered | cancelled | failed.
ALTER TABLE chat_scheduled
    ADD COLUMN failure_code text,
    ADD COLUMN failure text,
    ADD COLUMN failed_at timestamptz;
