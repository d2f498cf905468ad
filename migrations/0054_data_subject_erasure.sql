-- Erasing a data subject (docs/privacy.md): the `Erased` event of aggregate `data_subject`
-- destroys the subject's data keys in the event's own transaction, so the event and the
-- erasure are one fact: an erasure is never recorded without its keys gone, nor keys gone
-- without the record. Every process that caches keys hears of it (`subject_erased`) and
-- forgets the subject's keys at once.
--
-- A projector that opened a subject's field and has not yet written it must not be passed by
-- the erasure (the redaction that follows would not see its row, and its clear text would
-- stay): each projector transaction that opens personal fields first holds a shared
-- transaction-level advisory lock per subject, (1885956401, hashtext(subject)) — 1885956401
-- being 'pii1' in ASCII — and then checks that their keys still exist; the erasure takes the
-- same lock exclusively before it destroys the keys. So a transaction that found a key
-- commits before the erasure, and one that comes after finds it gone.
CREATE FUNCTION data_subject_erased() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1885956401, hashtext(NEW.aggregate_id));
    UPDATE data_subjects SET erased_at = coalesce(erased_at, NEW.recorded_at)
     WHERE subject_id = NEW.aggregate_id::uuid;
    DELETE FROM subject_keys WHERE subject_id = NEW.aggregate_id::uuid;
    PERFORM pg_notify('subject_erased', NEW.aggregate_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER data_subject_erased
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'data_subject' AND NEW.event_type = 'Erased')
    EXECUTE FUNCTION data_subject_erased();
