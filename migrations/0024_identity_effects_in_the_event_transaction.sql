-- What an admin user's event does to the command side's own tables happens in the transaction
-- that appends the event, so no crash, conflict or lost connection can leave one without the
-- other (a password changed with no event, or an event whose other sessions live on):
--
-- - A new password is hashed while the command is decided and *staged* under a random
--   credential id (`admin_credential_changes`); the event (`Created`, `PasswordChanged`,
--   `PasswordReset`) names that id, and appending it makes the staged hash the user's
--   password. A command that never commits leaves only a staged row, removed after a day.
-- - A login's session is *staged* (`admin_sessions.status = 'pending'`) before its command
--   runs; `LoginSucceeded` makes it active. A deactivation or role change appended after the
--   login (the stream's sequence orders them) therefore sees the session and ends it; before,
--   a session opened after the login committed could slip past a deactivation between the
--   two. A failed login's staged row is removed (and any left over after a day).
-- - `PasswordChanged` ends every other session of the user (all but `kept_session`, the one
--   that made the change) and spends outstanding reset tokens; `PasswordReset`,
--   `Deactivated` and `RoleChanged` end every session. Ending a session fires migration
--   0022's trigger, so `access_changes` and its NOTIFY follow in the same transaction.
--
-- The hash never enters an event: only the id does, which is worthless without this table.
CREATE TABLE admin_credential_changes (
    credential_id text        PRIMARY KEY,
    user_id       text        NOT NULL,
    password_hash text        NOT NULL,
    staged_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_credential_changes_staged_at ON admin_credential_changes (staged_at);

CREATE FUNCTION admin_user_effects() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    body       jsonb := NEW.payload -> NEW.event_type;
    credential text  := body ->> 'credential';
BEGIN
    IF credential IS NOT NULL THEN
        INSERT INTO admin_credentials AS c (user_id, password_hash)
        SELECT user_id, password_hash FROM admin_credential_changes
         WHERE credential_id = credential AND user_id = NEW.aggregate_id
        ON CONFLICT (user_id) DO UPDATE
            SET password_hash = excluded.password_hash, updated_at = now();
        IF NOT FOUND THEN
            -- The command staged it a moment ago; an event naming a credential that is not
            -- there would record a password change that did not happen.
            RAISE EXCEPTION 'credential % of admin user % is not staged', credential, NEW.aggregate_id;
        END IF;
        DELETE FROM admin_credential_changes WHERE credential_id = credential;
    END IF;
    IF NEW.event_type = 'LoginSucceeded' THEN
        UPDATE admin_sessions SET status = 'active'
         WHERE session_id = body ->> 'session_id' AND user_id = NEW.aggregate_id
           AND status = 'pending';
    END IF;
    IF NEW.event_type IN ('PasswordChanged', 'PasswordReset', 'Deactivated', 'RoleChanged') THEN
        UPDATE admin_sessions SET status = 'revoked'
         WHERE user_id = NEW.aggregate_id AND status <> 'revoked'
           AND session_id IS DISTINCT FROM (body ->> 'kept_session');
    END IF;
    IF NEW.event_type IN ('PasswordChanged', 'PasswordReset') THEN
        UPDATE admin_password_resets SET used_at = now()
         WHERE user_id = NEW.aggregate_id AND used_at IS NULL;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER admin_user_effects
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'admin_user'
          AND NEW.event_type IN ('Created', 'LoginSucceeded', 'PasswordChanged', 'PasswordReset',
                                 'Deactivated', 'RoleChanged'))
    EXECUTE FUNCTION admin_user_effects();
