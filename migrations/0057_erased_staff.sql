-- An erased staff member (an admin user erased as a data subject, docs/privacy.md) can no
-- longer sign in, and the command side no longer holds their login: the erasure's
-- transaction (0054, 0055) also deletes their login e-mail (`admin_emails`: a login naming
-- it is then an unknown e-mail, refused like any other and recorded nowhere) and their
-- password hash (`admin_credentials`), and revokes their sessions (`admin_sessions`, so
-- their refresh tokens stop; 0022 records each session's end). Their tokens already stop
-- through `access_changes` (0055).
CREATE OR REPLACE FUNCTION data_subject_erased() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1885956401, hashtext(NEW.aggregate_id));
    UPDATE data_subjects SET erased_at = coalesce(erased_at, NEW.recorded_at)
     WHERE subject_id = NEW.aggregate_id::uuid;
    DELETE FROM subject_keys WHERE subject_id = NEW.aggregate_id::uuid;
    DELETE FROM outbound_messages o USING phone_users p
     WHERE p.user_id = NEW.aggregate_id AND p.tenant_id = NEW.metadata->>'tenant_id'
       AND o.tenant_id = p.tenant_id AND o.recipient = p.phone;
    DELETE FROM phone_users
     WHERE user_id = NEW.aggregate_id AND tenant_id = NEW.metadata->>'tenant_id';
    DELETE FROM admin_emails WHERE user_id = NEW.aggregate_id;
    DELETE FROM admin_credentials WHERE user_id = NEW.aggregate_id;
    UPDATE admin_sessions SET status = 'revoked'
     WHERE user_id = NEW.aggregate_id AND status <> 'revoked';
    PERFORM access_changes_record('user:' || NEW.aggregate_id,
        '{"active": false, "erased": true}', 9223372036854775807);
    PERFORM pg_notify('subject_erased', NEW.aggregate_id);
    RETURN NULL;
END
$$;

-- Staff members are data subjects from their creation (as phone users are from their first
-- sign-in, 0055), so one who never wrote a note can be exported and erased: the `Created`
-- event of an admin user registers them, in its own transaction, under their home tenant
-- (`platform` for a super admin, as their sealed notes are). Those created before are
-- registered here.
CREATE FUNCTION admin_user_is_a_subject() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.aggregate_id ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        INSERT INTO data_subjects (subject_id, tenant_id, kind)
        VALUES (NEW.aggregate_id::uuid,
                coalesce(NEW.payload->'Created'->>'tenant_id', 'platform'), 'admin_user')
        ON CONFLICT (subject_id) DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER admin_user_is_a_subject
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'admin_user' AND NEW.event_type = 'Created')
    EXECUTE FUNCTION admin_user_is_a_subject();

INSERT INTO data_subjects (subject_id, tenant_id, kind)
SELECT aggregate_id::uuid, coalesce(payload->'Created'->>'tenant_id', 'platform'), 'admin_user'
  FROM events
 WHERE aggregate_type = 'admin_user' AND event_type = 'Created'
   AND aggregate_id ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
ON CONFLICT (subject_id) DO NOTHING;
