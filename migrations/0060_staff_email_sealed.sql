-- A staff member's login e-mail is sealed for them in their `Created` event
-- (docs/privacy.md): the event holds `pii1.…`, and the address in clear is staged here by
-- the create command just before it appends, and taken (deleted) by the trigger that
-- reserves it in `admin_emails` in the event's transaction (0042). A create that never
-- commits leaves its staged address, which the hourly purge deletes after a day. Events
-- written before keep working: an address in clear is reserved as before.
CREATE TABLE admin_email_staging (
    user_id   text        PRIMARY KEY,
    email     text        NOT NULL,
    staged_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_email_staging_staged_at ON admin_email_staging (staged_at);
COMMENT ON TABLE admin_email_staging IS 'owner: command-api. Login e-mails of admin users being created, until their Created event takes them (migration 0060).';

CREATE OR REPLACE FUNCTION admin_user_creation_and_resets() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    body      jsonb := NEW.payload -> NEW.event_type;
    new_email text  := body ->> 'email';
    reset     text  := body ->> 'reset';
BEGIN
    IF NEW.event_type = 'Created' THEN
        IF new_email LIKE 'pii1.%' THEN
            DELETE FROM admin_email_staging WHERE user_id = NEW.aggregate_id
            RETURNING email INTO new_email;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'the e-mail of admin user % is not staged', NEW.aggregate_id;
            END IF;
        END IF;
        -- The lock is taken in its own statement, so the insert's snapshot, taken after it,
        -- sees the events of a racing create that committed while this one waited.
        PERFORM pg_advisory_xact_lock(hashtext('admin_email:' || new_email));
        INSERT INTO admin_emails AS a (email, user_id, tenant_id)
        VALUES (new_email, NEW.aggregate_id, body ->> 'tenant_id')
        ON CONFLICT (email) DO UPDATE
            SET user_id = excluded.user_id, tenant_id = excluded.tenant_id, reserved_at = now()
          WHERE a.user_id = excluded.user_id
             OR NOT EXISTS (SELECT 1 FROM events e
                             WHERE e.aggregate_type = 'admin_user'
                               AND e.aggregate_id = a.user_id
                               AND e.aggregate_id <> NEW.aggregate_id);
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the e-mail of admin user % was taken by another user', NEW.aggregate_id
                USING ERRCODE = 'serialization_failure';
        END IF;
    ELSIF reset IS NOT NULL THEN
        INSERT INTO admin_password_resets (token_hash, user_id, expires_at)
        SELECT token_hash, user_id, expires_at FROM admin_password_reset_staging
         WHERE reset_id = reset AND user_id = NEW.aggregate_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'reset % of admin user % is not staged', reset, NEW.aggregate_id;
        END IF;
        INSERT INTO outbound_messages (id, tenant_id, channel, recipient, body, causation_id, status)
        SELECT gen_random_uuid(), tenant_id, 'email', recipient, s.body,
               NEW.aggregate_type || ':' || NEW.aggregate_id || ':' || NEW.sequence, 'captured'
          FROM admin_password_reset_staging s
         WHERE reset_id = reset
        ON CONFLICT (causation_id) DO NOTHING;
        DELETE FROM admin_password_reset_staging WHERE reset_id = reset;
    END IF;
    RETURN NULL;
END;
$$;
