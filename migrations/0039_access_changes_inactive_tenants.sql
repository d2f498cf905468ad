-- A tenant that is not active — awaiting approval (`SignupRequested`), turned down
-- (`Rejected`) or suspended — is locked out the same way: every token of its staff and
-- chatbot users is refused, logins are refused, and nothing is delivered for it. Until now
-- only `Suspended` was recorded, so a rejected tenant's admins (made by a super admin) could
-- log in and work. `access_changes` keeps the flag under its old name, `suspended`, meaning
-- "not serving"; `Approved` and `Reactivated` clear it (a tenant `Created` by a super admin
-- is active from the start: nothing to record). Replaces migration 0035's function and
-- trigger.
CREATE OR REPLACE FUNCTION access_changes_from_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.aggregate_type = 'admin_user' THEN
        PERFORM access_changes_record('user:' || NEW.aggregate_id,
            CASE NEW.event_type
                WHEN 'RoleChanged' THEN
                    jsonb_build_object('role', NEW.payload #>> '{RoleChanged,role}')
                WHEN 'Deactivated' THEN jsonb_build_object('active', false)
                ELSE jsonb_build_object('active', true)
            END,
            NEW.sequence);
    ELSIF NEW.event_type = 'PreferencesUpdated' THEN
        PERFORM access_changes_record('tenant:' || NEW.aggregate_id,
            jsonb_build_object('chatbot_disabled',
                coalesce(NEW.payload #> '{PreferencesUpdated,preferences,chatbot,enabled}'
                         = 'false'::jsonb, false)),
            NEW.sequence);
    ELSE
        PERFORM access_changes_record('tenant:' || NEW.aggregate_id,
            jsonb_build_object('suspended',
                NEW.event_type IN ('Suspended', 'SignupRequested', 'Rejected')),
            NEW.sequence);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER access_changes_from_event ON events;
CREATE TRIGGER access_changes_from_event
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN ((NEW.aggregate_type = 'admin_user'
           AND NEW.event_type IN ('RoleChanged', 'Deactivated', 'Reactivated'))
       OR (NEW.aggregate_type = 'tenant'
           AND NEW.event_type IN ('Suspended', 'Reactivated', 'PreferencesUpdated',
                                  'SignupRequested', 'Rejected', 'Approved')))
    EXECUTE FUNCTION access_changes_from_event();

-- Tenants awaiting approval or turned down now, from their latest status event.
INSERT INTO access_changes AS a (key, state, version)
SELECT 'tenant:' || s.aggregate_id, jsonb_build_object('suspended', true), s.sequence
  FROM (SELECT DISTINCT ON (aggregate_id) aggregate_id, sequence, event_type
          FROM events
         WHERE aggregate_type = 'tenant'
           AND event_type IN ('SignupRequested', 'Approved', 'Rejected', 'Created',
                              'Suspended', 'Reactivated')
         ORDER BY aggregate_id, sequence DESC) s
 WHERE s.event_type IN ('SignupRequested', 'Rejected')
ON CONFLICT (key) DO UPDATE
    SET state = a.state || excluded.state, version = greatest(a.version, excluded.version);
