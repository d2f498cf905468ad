-- Two more of an admin user's effects move into the transaction that appends its event
-- (after migration 0024), so that a request failing after the commit cannot leave half of
-- them and a retry always converges:
--
-- - `Created` takes the user's login e-mail in `admin_emails`. A create that never commits
--   holds nothing, so its retry is not refused as `email_taken`. Two creates racing for one
--   address are serialised by an advisory lock on the address; the second finds it taken by
--   a user that exists and fails as a serialization failure (503; retried, the aggregate
--   answers `email_taken`). A row left by an earlier create that never committed (its user
--   has no events) is taken over.
-- - `PasswordResetIssued` names a staged reset (`admin_password_reset_staging`: the token's
--   hash and its e-mail, written by the command just before): the event stores the hash in
--   `admin_password_resets` and the e-mail in `outbound_messages`, keyed by the event. An
--   event naming a reset that is not staged fails, as for credentials.
CREATE TABLE admin_password_reset_staging (
    reset_id    text        PRIMARY KEY,
    user_id     text        NOT NULL,
    token_hash  bytea       NOT NULL,
    expires_at  timestamptz NOT NULL,
    tenant_id   text        NOT NULL,
    recipient   text        NOT NULL,
    body        text        NOT NULL,
    staged_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_password_reset_staging_staged_at ON admin_password_reset_staging (staged_at);

CREATE FUNCTION admin_user_creation_and_resets() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    body      jsonb := NEW.payload -> NEW.event_type;
    new_email text  := body ->> 'email';
    reset     text  := body ->> 'reset';
BEGIN
    IF NEW.event_type = 'Created' THEN
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

CREATE TRIGGER admin_user_creation_and_resets
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'admin_user'
          AND NEW.event_type IN ('Created', 'PasswordResetIssued'))
    EXECUTE FUNCTION admin_user_creation_and_resets();
