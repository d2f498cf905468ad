-- Events are facts, never updated (0001) — with one exception: the one-time transform that
-- seals personal fields events written before sealing hold in clear (docs/privacy.md, "The
-- existing store"; `command-api privacy seal-store`). It may change `payload` and nothing
-- else, and only in a transaction that declares it with
-- `SET LOCAL events.transform = 'seal-personal-data'`; every other update, every delete and
-- every truncate is refused as before.
CREATE OR REPLACE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Nested: NEW is not assigned in a DELETE's or a TRUNCATE's trigger.
    IF TG_OP = 'UPDATE' AND current_setting('events.transform', true) = 'seal-personal-data' THEN
        IF (NEW.aggregate_type, NEW.aggregate_id, NEW.sequence, NEW.event_type,
            NEW.event_version, NEW.metadata, NEW.global_position, NEW.transaction_id,
            NEW.recorded_at)
           IS NOT DISTINCT FROM
           (OLD.aggregate_type, OLD.aggregate_id, OLD.sequence, OLD.event_type,
            OLD.event_version, OLD.metadata, OLD.global_position, OLD.transaction_id,
            OLD.recorded_at)
        THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'events are append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;
