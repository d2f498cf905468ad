-- Owner: command-api (the admin-user aggregate's services). Each admin user's current role
-- and whether it is active, kept in the transaction of the event that changes either
-- (`Created`, `RoleChanged`, `Deactivated`, `Reactivated`), so the command side can tell
-- whether a user is the last active super admin from its own table, never from a read model.
-- The aggregate refuses to deactivate or demote that user (422 `last_super_admin`); two such
-- changes racing each other, each seeing the other's user still there, are caught here: the
-- second to commit waits for the first (an advisory lock), then finds no active super admin
-- left and fails as a serialization failure, which command-api answers 503 — retried, the
-- aggregate refuses it.
CREATE TABLE admin_roles (
    user_id text    PRIMARY KEY,
    role    text    NOT NULL,
    active  boolean NOT NULL DEFAULT true
);

CREATE FUNCTION admin_roles_from_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    body jsonb := NEW.payload -> NEW.event_type;
    was  text;
BEGIN
    SELECT role INTO was FROM admin_roles WHERE user_id = NEW.aggregate_id AND active;
    IF was = 'super_admin' THEN
        PERFORM pg_advisory_xact_lock(hashtext('admin_roles:super_admin'));
    END IF;
    IF NEW.event_type = 'Created' THEN
        INSERT INTO admin_roles (user_id, role) VALUES (NEW.aggregate_id, body ->> 'role')
        ON CONFLICT (user_id) DO UPDATE SET role = excluded.role, active = true;
    ELSIF NEW.event_type = 'RoleChanged' THEN
        UPDATE admin_roles SET role = body ->> 'role' WHERE user_id = NEW.aggregate_id;
    ELSE
        UPDATE admin_roles SET active = (NEW.event_type = 'Reactivated')
         WHERE user_id = NEW.aggregate_id;
    END IF;
    IF was = 'super_admin'
       AND NOT EXISTS (SELECT 1 FROM admin_roles WHERE role = 'super_admin' AND active) THEN
        RAISE EXCEPTION 'the last active super admin cannot be deactivated or demoted'
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER admin_roles_from_event
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'admin_user'
          AND NEW.event_type IN ('Created', 'RoleChanged', 'Deactivated', 'Reactivated'))
    EXECUTE FUNCTION admin_roles_from_event();

-- Every admin user so far: the role of its latest `Created` or `RoleChanged`, active unless
-- its latest `Deactivated` or `Reactivated` is a deactivation.
INSERT INTO admin_roles (user_id, role, active)
SELECT r.aggregate_id, r.role, coalesce(a.event_type <> 'Deactivated', true)
  FROM (SELECT DISTINCT ON (aggregate_id) aggregate_id,
               payload -> event_type ->> 'role' AS role
          FROM events
         WHERE aggregate_type = 'admin_user' AND event_type IN ('Created', 'RoleChanged')
         ORDER BY aggregate_id, sequence DESC) r
  LEFT JOIN (SELECT DISTINCT ON (aggregate_id) aggregate_id, event_type
               FROM events
              WHERE aggregate_type = 'admin_user'
                AND event_type IN ('Deactivated', 'Reactivated')
              ORDER BY aggregate_id, sequence DESC) a USING (aggregate_id);
