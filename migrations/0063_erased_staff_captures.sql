-- An erased staff member's captured e-mails (the dev inbox's password resets and
-- invitations, `outbound_messages` addressed to their login e-mail) go with their erasure,
-- as a phone user's captured codes do (0055): deleted in the erasure's transaction, before
-- their login e-mail itself (0057), which is how they are found.
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
    DELETE FROM outbound_messages o USING admin_emails a
     WHERE a.user_id = NEW.aggregate_id AND lower(o.recipient) = lower(a.email);
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
