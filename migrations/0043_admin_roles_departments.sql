-- `admin_roles` (migration 0040) also keeps each admin user's tenant and department, in the
-- transaction of `Created` and `DepartmentChanged`, so the tenant aggregate can refuse to
-- remove a department that still has members (422 `department_in_use`) from a command-side
-- table rather than a read model.
ALTER TABLE admin_roles ADD COLUMN tenant_id text, ADD COLUMN department text;

CREATE OR REPLACE FUNCTION admin_roles_from_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    body jsonb := NEW.payload -> NEW.event_type;
    was  text;
BEGIN
    SELECT role INTO was FROM admin_roles WHERE user_id = NEW.aggregate_id AND active;
    IF was = 'super_admin' THEN
        PERFORM pg_advisory_xact_lock(hashtext('admin_roles:super_admin'));
    END IF;
    IF NEW.event_type = 'Created' THEN
        INSERT INTO admin_roles (user_id, role, tenant_id, department)
        VALUES (NEW.aggregate_id, body ->> 'role', body ->> 'tenant_id', body ->> 'department')
        ON CONFLICT (user_id) DO UPDATE
            SET role = excluded.role, active = true, tenant_id = excluded.tenant_id,
                department = excluded.department;
    ELSIF NEW.event_type = 'RoleChanged' THEN
        UPDATE admin_roles SET role = body ->> 'role' WHERE user_id = NEW.aggregate_id;
    ELSIF NEW.event_type = 'DepartmentChanged' THEN
        UPDATE admin_roles SET department = body ->> 'department'
         WHERE user_id = NEW.aggregate_id;
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

DROP TRIGGER admin_roles_from_event ON events;
CREATE TRIGGER admin_roles_from_event
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'admin_user'
          AND NEW.event_type IN ('Created', 'RoleChanged', 'DepartmentChanged', 'Deactivated',
                                 'Reactivated'))
    EXECUTE FUNCTION admin_roles_from_event();

-- Every admin user's tenant, and its department from its latest `Created` or
-- `DepartmentChanged`.
UPDATE admin_roles r
   SET tenant_id = c.payload -> 'Created' ->> 'tenant_id'
  FROM events c
 WHERE c.aggregate_type = 'admin_user' AND c.aggregate_id = r.user_id
   AND c.event_type = 'Created';
UPDATE admin_roles r
   SET department = d.department
  FROM (SELECT DISTINCT ON (aggregate_id) aggregate_id,
               payload -> event_type ->> 'department' AS department
          FROM events
         WHERE aggregate_type = 'admin_user' AND event_type IN ('Created', 'DepartmentChanged')
         ORDER BY aggregate_id, sequence DESC) d
 WHERE d.aggregate_id = r.user_id;
CREATE INDEX admin_roles_department ON admin_roles (tenant_id, lower(department))
    WHERE department IS NOT NULL;
