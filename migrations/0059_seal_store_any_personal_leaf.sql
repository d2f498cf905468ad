-- The store's transform (docs/privacy.md, "The existing store") now also seals WhatsApp
-- conversations, what webhooks kept about a person, SMS and calls, and staff e-mails. Its
-- exception to append-only (0056, narrowed in 0058) becomes one rule for every kind of
-- event it rewrites: in a transaction that declares the transform, an
-- update of an event of a listed kind may change only `payload`, and in it only turn values
-- into ciphertext (`pii1.…`) or the redaction marker `[erased]` — every key, every array
-- element and every other value stays as it was. So the transform can hide facts, never
-- alter or add one. The one addition allowed: a conversation's `Started` that has no
-- `conversation_id` may gain it, equal to the event's own aggregate id (so its sealed
-- number is never needed to name it).

-- Whether `new` is `old` with some values (of any type but null) replaced by a sealed
-- field or `[erased]`, and nothing else changed.
CREATE OR REPLACE FUNCTION events_payload_only_sealed(old jsonb, new jsonb)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k text;
    i integer;
BEGIN
    IF old IS NOT DISTINCT FROM new THEN
        RETURN true;
    END IF;
    IF old IS NULL OR new IS NULL THEN
        RETURN false;
    END IF;
    IF jsonb_typeof(new) = 'string' AND jsonb_typeof(old) <> 'null'
       AND ((new #>> '{}') LIKE 'pii1.%' OR (new #>> '{}') = '[erased]') THEN
        RETURN true;
    END IF;
    IF jsonb_typeof(old) = 'object' AND jsonb_typeof(new) = 'object' THEN
        IF ARRAY(SELECT jsonb_object_keys(old) ORDER BY 1)
           IS DISTINCT FROM ARRAY(SELECT jsonb_object_keys(new) ORDER BY 1) THEN
            RETURN false;
        END IF;
        FOR k IN SELECT jsonb_object_keys(old) LOOP
            IF NOT events_payload_only_sealed(old -> k, new -> k) THEN
                RETURN false;
            END IF;
        END LOOP;
        RETURN true;
    END IF;
    IF jsonb_typeof(old) = 'array' AND jsonb_typeof(new) = 'array'
       AND jsonb_array_length(old) = jsonb_array_length(new) THEN
        FOR i IN 0 .. jsonb_array_length(old) - 1 LOOP
            IF NOT events_payload_only_sealed(old -> i, new -> i) THEN
                RETURN false;
            END IF;
        END LOOP;
        RETURN true;
    END IF;
    RETURN false;
END;
$$;

CREATE OR REPLACE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    compared jsonb;
BEGIN
    -- Nested: NEW is not assigned in a DELETE's or a TRUNCATE's trigger.
    IF TG_OP = 'UPDATE' AND current_setting('events.transform', true) = 'seal-personal-data'
       AND ((OLD.aggregate_type = 'thread'
             AND OLD.event_type IN ('Opened', 'MessageSent', 'MessageEdited', 'MessageScheduled'))
            OR (OLD.aggregate_type = 'whatsapp_conversation'
                AND OLD.event_type IN ('Started', 'MessageReceived', 'MessageQueued',
                                       'MessageRevised'))
            OR (OLD.aggregate_type = 'webhook' AND OLD.event_type = 'Received')
            OR (OLD.aggregate_type = 'sms'
                AND OLD.event_type IN ('SmsReceived', 'DeliveryStatusChanged'))
            OR (OLD.aggregate_type = 'call'
                AND OLD.event_type IN ('CallStatusChanged', 'CallRecorded'))
            OR (OLD.aggregate_type = 'admin_user' AND OLD.event_type = 'Created')) THEN
        compared := NEW.payload;
        IF OLD.aggregate_type = 'whatsapp_conversation' AND OLD.event_type = 'Started'
           AND NOT (OLD.payload -> 'Started' ? 'conversation_id')
           AND NEW.payload -> 'Started' ->> 'conversation_id' = OLD.aggregate_id THEN
            compared := NEW.payload #- '{Started,conversation_id}';
        END IF;
        IF (NEW.aggregate_type, NEW.aggregate_id, NEW.sequence, NEW.event_type,
            NEW.event_version, NEW.metadata, NEW.global_position, NEW.transaction_id,
            NEW.recorded_at)
           IS NOT DISTINCT FROM
           (OLD.aggregate_type, OLD.aggregate_id, OLD.sequence, OLD.event_type,
            OLD.event_version, OLD.metadata, OLD.global_position, OLD.transaction_id,
            OLD.recorded_at)
           AND events_payload_only_sealed(OLD.payload, compared)
        THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'events are append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;
