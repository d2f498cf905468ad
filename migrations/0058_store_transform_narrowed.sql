-- The one exception to append-only (0056) narrowed to exactly what the store's transform
-- does (docs/privacy.md, "The existing store"): in a transaction that declares it, an
-- update may change one field of one kind of event — a thread's subject line (`Opened`) or
-- a text (`MessageSent`, `MessageEdited`, `MessageScheduled`) — and only into a sealed
-- field (`pii1.…`) or `[erased]`; every other column and every other part of the payload
-- stays as it was. A session that set the transform's setting by mistake (or a role or
-- database default that sets it) can therefore still change no fact of any other kind,
-- nor put anything but ciphertext or the redaction marker into a text.
CREATE OR REPLACE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    field text;
    sealed text;
BEGIN
    -- Nested: NEW is not assigned in a DELETE's or a TRUNCATE's trigger.
    IF TG_OP = 'UPDATE' AND current_setting('events.transform', true) = 'seal-personal-data'
       AND OLD.aggregate_type = 'thread'
       AND OLD.event_type IN ('Opened', 'MessageSent', 'MessageEdited', 'MessageScheduled') THEN
        field := CASE OLD.event_type WHEN 'Opened' THEN 'subject' ELSE 'text' END;
        sealed := NEW.payload #>> ARRAY[NEW.event_type, field];
        IF (NEW.aggregate_type, NEW.aggregate_id, NEW.sequence, NEW.event_type,
            NEW.event_version, NEW.metadata, NEW.global_position, NEW.transaction_id,
            NEW.recorded_at)
           IS NOT DISTINCT FROM
           (OLD.aggregate_type, OLD.aggregate_id, OLD.sequence, OLD.event_type,
            OLD.event_version, OLD.metadata, OLD.global_position, OLD.transaction_id,
            OLD.recorded_at)
           AND (NEW.payload #- ARRAY[NEW.event_type, field])
               = (OLD.payload #- ARRAY[OLD.event_type, field])
           AND (sealed LIKE 'pii1.%' OR sealed = '[erased]')
        THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'events are append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;
