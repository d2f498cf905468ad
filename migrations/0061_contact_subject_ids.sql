-- A thread's contact (someone reached by SMS or WhatsApp) is named by their data subject's
-- id, and their number travels sealed beside it in `Opened.customer_address`
-- (docs/privacy.md). The inbox keeps the number, opened, for staff; the erasure of the
-- contact overwrites it with `[erased]` as it does their texts.
ALTER TABLE chat_threads ADD COLUMN customer_address text;
COMMENT ON COLUMN chat_threads.customer_address IS 'owner: projector. The number of a customer of kind contact (from Opened.customer_address, opened); null for other customers and for threads opened before it was kept.';

-- The store's transform (0059's rule) may also move a thread that names its contact by
-- number to the form above: in `Opened`, the customer of kind `contact` whose id is not a
-- UUID may get a UUID as id (the transform derives the contact's subject id) when the
-- event gains a sealed `customer_address` (`[erased]` for a contact erased before); in `MessageSent`, such an author may get a UUID
-- as id. Everything else is held to 0059's rule: values only turn into ciphertext.
CREATE OR REPLACE FUNCTION events_contact_named_by_subject(old jsonb, new jsonb)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT old ->> 'kind' = 'contact' AND new ->> 'kind' = 'contact'
       AND old ->> 'id' !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
       AND new ->> 'id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
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
        IF OLD.aggregate_type = 'thread' AND OLD.event_type = 'Opened'
           AND NOT (OLD.payload -> 'Opened' ? 'customer_address')
           AND (NEW.payload -> 'Opened' ->> 'customer_address' LIKE 'pii1.%'
                OR NEW.payload -> 'Opened' ->> 'customer_address' = '[erased]')
           AND events_contact_named_by_subject(OLD.payload #> '{Opened,customer}',
                                               NEW.payload #> '{Opened,customer}') THEN
            compared := jsonb_set(NEW.payload #- '{Opened,customer_address}',
                                  '{Opened,customer,id}', OLD.payload #> '{Opened,customer,id}');
        END IF;
        IF OLD.aggregate_type = 'thread' AND OLD.event_type = 'MessageSent'
           AND events_contact_named_by_subject(OLD.payload #> '{MessageSent,author}',
                                               NEW.payload #> '{MessageSent,author}') THEN
            compared := jsonb_set(NEW.payload, '{MessageSent,author,id}',
                                  OLD.payload #> '{MessageSent,author,id}');
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
