-- A department is removed only when no admin user is in it (the tenant aggregate asks
-- `admin_roles`, migration 0043), and a user is placed only in a department that exists (the
-- route asks the tenant aggregate). Each asks before its own transaction, so a removal and a
-- placement racing each other could both pass and leave a user in a department that is
-- gone. Here both take one advisory lock per (tenant, department), in the transaction that
-- appends their event, and check again under it: the second to commit finds what the first
-- did and fails as a serialization failure (503; retried, the aggregate or the route refuses
-- it with `department_in_use` or `unknown_department`).

CREATE FUNCTION department_lock(tenant text, department text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtext('department:' || tenant || ':' || lower(department)))
$$;

CREATE FUNCTION department_removal_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    name text := NEW.payload -> 'DepartmentRemoved' ->> 'name';
BEGIN
    PERFORM department_lock(NEW.aggregate_id, name);
    IF EXISTS (SELECT 1 FROM admin_roles
                WHERE tenant_id = NEW.aggregate_id AND lower(department) = lower(name)) THEN
        RAISE EXCEPTION 'department % of tenant % has members', name, NEW.aggregate_id
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER department_removal_guard
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'tenant' AND NEW.event_type = 'DepartmentRemoved')
    EXECUTE FUNCTION department_removal_guard();

CREATE FUNCTION department_placement_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    department text := NEW.payload -> NEW.event_type ->> 'department';
    tenant     text;
BEGIN
    IF department IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT tenant_id INTO tenant FROM admin_roles WHERE user_id = NEW.aggregate_id;
    IF tenant IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM department_lock(tenant, department);
    IF NOT coalesce((SELECT event_type = 'DepartmentAdded' FROM events
                      WHERE aggregate_type = 'tenant' AND aggregate_id = tenant
                        AND event_type IN ('DepartmentAdded', 'DepartmentRemoved')
                        AND lower(payload -> event_type ->> 'name') = lower(department)
                      ORDER BY sequence DESC LIMIT 1), false) THEN
        RAISE EXCEPTION 'department % of tenant % is gone', department, tenant
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN NULL;
END;
$$;

-- After `admin_roles_from_event` (triggers of one event fire in name order), so a created
-- user's row, with its tenant, is there.
CREATE TRIGGER department_placement_guard
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'admin_user'
          AND NEW.event_type IN ('Created', 'DepartmentChanged'))
    EXECUTE FUNCTION department_placement_guard();
