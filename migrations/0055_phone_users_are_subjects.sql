-- Phone users are data subjects from their first sign-in (docs/privacy.md), not only once
-- something was sealed for them: command-api registers them in `data_subjects` when a code
-- is verified, so a phone user who never wrote can be erased and exported. Those who signed
-- in before are registered here.
INSERT INTO data_subjects (subject_id, tenant_id, kind)
SELECT user_id::uuid, tenant_id, 'phone_user'
  FROM phone_users
 WHERE user_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
ON CONFLICT (subject_id) DO NOTHING;

-- The erasure (0054) also, in the same transaction:
-- * deletes the command side's record of a phone user (`phone_users`: the number, name,
--   e-mail and locale, which no event carries), so nothing there names the person, and the
--   messages captured for their number at that tenant (`outbound_messages`: the dev inbox's
--   sign-in codes; a queued one is not sent to an erased person either);
-- * ends every token of the person: `user:{id}` is recorded inactive in `access_changes`
--   (0022), at the highest version, so no later change of an admin user brings it back.
--   Both APIs refuse a token of that user from the notification on, a phone user's as an
--   admin's.
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
    PERFORM access_changes_record('user:' || NEW.aggregate_id,
        '{"active": false, "erased": true}', 9223372036854775807);
    PERFORM pg_notify('subject_erased', NEW.aggregate_id);
    RETURN NULL;
END
$$;

COMMENT ON TABLE phone_users IS 'owner: command-api. Phone numbers and profiles of chatbot users (personal data kept out of events, deleted on erasure). read by query-api: a phone user''s profile in the export of their data (docs/privacy.md).';
