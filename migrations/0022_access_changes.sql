-- What makes a signed, unexpired token stop working before it expires: a session ended
-- (logout, a refresh token reused, a password changed, a user deactivated), a user
-- deactivated or given another role, a tenant suspended. Both APIs keep this table in memory
-- and check every token against it (events `access::Revocations`); they load it at start and
-- follow it through NOTIFY `access_changes`, which PostgreSQL delivers at commit to every
-- listening process, so a revocation takes effect everywhere within milliseconds.
--
-- The rows are written by triggers in the transaction that made the change (the identity
-- event, the session row), so no crash between the change and this table can lose one.
-- These transactions are rare; NOTIFY serialises the commits of the transactions that send
-- one (see 0012), never the others.
--
-- Keys: `session:{session_id}` (state `{"revoked": true}`), `user:{admin user id}` (state
-- `{"active": bool, "role": text}`, each present once an event set it), `tenant:{id}` (state
-- `{"suspended": bool}`). `version` is the stream's sequence for users and tenants, so a
-- process that reloads and then hears an older notification keeps the newer state.
CREATE TABLE access_changes (
    key        text        PRIMARY KEY,
    state      jsonb       NOT NULL,
    version    bigint      NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
-- Ended sessions are pruned once every token they issued has expired.
CREATE INDEX access_changes_changed_at ON access_changes (changed_at);

CREATE FUNCTION access_changes_record(change_key text, change jsonb, change_version bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    merged jsonb;
BEGIN
    INSERT INTO access_changes AS a (key, state, version)
    VALUES (change_key, change, change_version)
    ON CONFLICT (key) DO UPDATE
        SET state = a.state || excluded.state, version = excluded.version, changed_at = now()
        WHERE a.version < excluded.version
    RETURNING state INTO merged;
    IF merged IS NOT NULL THEN
        PERFORM pg_notify('access_changes', json_build_object(
            'key', change_key, 'state', merged, 'version', change_version)::text);
    END IF;
END;
$$;

-- Identity and tenant events that change what a token may do.
CREATE FUNCTION access_changes_from_event() RETURNS trigger LANGUAGE plpgsql AS $$
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
    ELSE
        PERFORM access_changes_record('tenant:' || NEW.aggregate_id,
            jsonb_build_object('suspended', NEW.event_type = 'Suspended'), NEW.sequence);
    END IF;
    RETURN NULL;
END;
$$;

-- The WHEN clause is evaluated without entering PL/pgSQL, so every other append pays
-- nothing but the comparison.
CREATE TRIGGER access_changes_from_event
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN ((NEW.aggregate_type = 'admin_user'
           AND NEW.event_type IN ('RoleChanged', 'Deactivated', 'Reactivated'))
       OR (NEW.aggregate_type = 'tenant' AND NEW.event_type IN ('Suspended', 'Reactivated')))
    EXECUTE FUNCTION access_changes_from_event();

-- A session ends when its refresh-token family is revoked, whatever revoked it. Every row
-- of the family fires; the first records it, and PostgreSQL folds identical notifications
-- of one transaction into one.
CREATE FUNCTION access_changes_from_session() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM access_changes_record('session:' || NEW.session_id, '{"revoked": true}', 1);
    RETURN NULL;
END;
$$;

CREATE TRIGGER access_changes_from_session
    AFTER UPDATE OF status ON admin_sessions
    FOR EACH ROW
    WHEN (NEW.status = 'revoked' AND OLD.status <> 'revoked')
    EXECUTE FUNCTION access_changes_from_session();

-- What happened before this migration: sessions revoked while their tokens may live, users
-- and tenants whose latest state change is recorded in events.
INSERT INTO access_changes (key, state, version)
SELECT DISTINCT 'session:' || session_id, '{"revoked": true}'::jsonb, 1
  FROM admin_sessions
 WHERE status = 'revoked' AND created_at > now() - interval '2 days'
ON CONFLICT DO NOTHING;

INSERT INTO access_changes (key, state, version)
SELECT 'user:' || aggregate_id,
       jsonb_strip_nulls(jsonb_build_object(
           'role', (SELECT e.payload #>> '{RoleChanged,role}' FROM events e
                     WHERE e.aggregate_type = 'admin_user' AND e.aggregate_id = u.aggregate_id
                       AND e.event_type = 'RoleChanged'
                     ORDER BY e.sequence DESC LIMIT 1),
           'active', (SELECT e.event_type <> 'Deactivated' FROM events e
                       WHERE e.aggregate_type = 'admin_user' AND e.aggregate_id = u.aggregate_id
                         AND e.event_type IN ('Deactivated', 'Reactivated')
                       ORDER BY e.sequence DESC LIMIT 1))),
       max(sequence)
  FROM events u
 WHERE aggregate_type = 'admin_user' AND event_type IN ('RoleChanged', 'Deactivated', 'Reactivated')
 GROUP BY aggregate_id;

INSERT INTO access_changes (key, state, version)
SELECT DISTINCT ON (aggregate_id) 'tenant:' || aggregate_id,
       jsonb_build_object('suspended', event_type = 'Suspended'), sequence
  FROM events
 WHERE aggregate_type = 'tenant' AND event_type IN ('Suspended', 'Reactivated')
 ORDER BY aggregate_id, sequence DESC;
