-- A tenant that switches its chatbot off (`PreferencesUpdated` with
-- `{"chatbot": {"enabled": false}}`) stops its chatbot users' existing tokens at once, as a
-- suspension stops every token of the tenant: the change is recorded in `access_changes`
-- (`tenant:{id}` gains `chatbot_disabled`) in the transaction of its event, and every
-- process follows it (events::revocation). Replaces migration 0022's function and trigger.
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
            jsonb_build_object('suspended', NEW.event_type = 'Suspended'), NEW.sequence);
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
           AND NEW.event_type IN ('Suspended', 'Reactivated', 'PreferencesUpdated')))
    EXECUTE FUNCTION access_changes_from_event();

-- Tenants whose chatbot is off now, from their latest preferences.
INSERT INTO access_changes AS a (key, state, version)
SELECT 'tenant:' || p.aggregate_id, jsonb_build_object('chatbot_disabled', true), p.sequence
  FROM (SELECT DISTINCT ON (aggregate_id) aggregate_id, sequence, payload
          FROM events
         WHERE aggregate_type = 'tenant' AND event_type = 'PreferencesUpdated'
         ORDER BY aggregate_id, sequence DESC) p
 WHERE p.payload #> '{PreferencesUpdated,preferences,chatbot,enabled}' = 'false'::jsonb
ON CONFLICT (key) DO UPDATE
    SET state = a.state || excluded.state, version = greatest(a.version, excluded.version);
