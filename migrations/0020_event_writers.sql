-- Publishing waits only for transactions that write events (docs/decisions/0003-event-writers.md).
--
-- Before this migration the relay read below `pg_snapshot_xmin(pg_current_snapshot())`, the
-- oldest transaction still running anywhere in the PostgreSQL cluster: one open transaction
-- of another application, in another database, froze every read model, realtime update and
-- provider send until it ended.
--
-- Now every transaction that appends events announces itself before it has a transaction id:
-- it takes a shared transaction-level advisory lock (released at its commit or abort), which
-- the relay sees in `pg_locks`. The relay's horizon is the oldest transaction id among those
-- announced writers, or the snapshot's `xmax` when there are none. Announcing cannot be
-- forgotten: a trigger does it on the first insert into `events`, and refuses a transaction
-- that already wrote something else unannounced (its id would predate its announcement, and
-- the relay could pass it while it is still running).
--
-- The lock key is the two-integer form (1702260340, n), 1702260340 being 'evnt' in ASCII and
-- n the backend's pid modulo 16: sixteen keys rather than one, so that concurrent writers
-- spread over the lock manager's partitions instead of all queueing on one lock's. Nothing
-- ever takes these keys exclusively, so they never make anybody wait. The relay's own lock
-- uses the one-bigint form and cannot collide with them (`pg_locks.objsubid` 1 against 2).

-- Makes the current transaction an announced event writer; does nothing the second time.
-- Called by the trigger below; a transaction that must write something else before its
-- events calls it first. It also bounds the writer: an event-writing transaction holds the
-- relay back for as long as it is open, so its later statements and its idle time between
-- them are limited to `events.writer_timeout` (default 5 s; a session or database may set
-- it, e.g. `SET events.writer_timeout = '10min'` for a large import). A writer that overruns
-- is cancelled (statement) or disconnected (idle), its events roll back, and publishing
-- moves on.
CREATE FUNCTION events_writer_announce() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    timeout text;
BEGIN
    IF current_setting('events.writer', true) = 'announced' THEN
        RETURN;
    END IF;
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'a transaction that appends events must announce itself before its first write'
            USING HINT = 'make the events its first write, or SELECT events_writer_announce() first';
    END IF;
    PERFORM pg_advisory_xact_lock_shared(1702260340, pg_backend_pid() % 16);
    PERFORM set_config('events.writer', 'announced', true);
    timeout := coalesce(nullif(current_setting('events.writer_timeout', true), ''), '5s');
    PERFORM set_config('statement_timeout', timeout, true);
    PERFORM set_config('idle_in_transaction_session_timeout', timeout, true);
END;
$$;

CREATE FUNCTION events_writer_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM events_writer_announce();
    RETURN NULL;
END;
$$;

-- Before the statement's first row, so before the row's `transaction_id` default assigns
-- the transaction its id.
CREATE TRIGGER events_writer_announced
    BEFORE INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_writer_trigger();

-- The commit horizon: every transaction id below it that wrote events has ended, so a read
-- of `transaction_id < horizon` in a *later* statement (a later snapshot) sees each of
-- their events or none of them, and no event below it will ever appear again. The later
-- snapshot is the caller's to ensure: a statement of its own (autocommit) or a read
-- committed transaction, never repeatable read or serializable, where the read would
-- share the horizon's snapshot and miss a writer that committed meanwhile.
--
-- Why it holds: let S be the snapshot taken first, before anything else is read. A writer
-- whose id is below `xmax(S)` got that id before S, so it was already announced and holding
-- the lock at S; if it is still running when the locks and ids are read, the horizon is at
-- or below its id; if not, it ended before that read, so before the caller's next
-- statement. A writer that gets its id after S gets one at or above `xmax(S)`. When nothing
-- at all is in flight below `xmax(S)`, no writer can be, and nothing else is read.
--
-- A running writer's id is read from its backend (`pg_stat_get_activity`'s `backend_xid`),
-- which PostgreSQL fills in at the same moment it makes the id visible to snapshots — not
-- from the writer's own transaction-id lock in `pg_locks`, which is inserted a moment later
-- (a writer caught in that moment would be passed, and its events skipped). Ids are matched
-- against S's in-progress list (`pg_snapshot_xip`, 64-bit) by their low 32 bits, the form
-- both views show; two running transactions never share them. A prepared (two-phase)
-- writer has no backend but keeps its locks, its transaction-id lock among them, so that is
-- read too, for every announced holder (an extra id only lowers the horizon).
--
-- PL/pgSQL, so that each session plans the query once. `pg_stat_get_activity` answers from
-- a copy taken once per transaction unless cleared, and a caller may ask twice in one.
CREATE FUNCTION events_commit_horizon() RETURNS xid8 LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    s pg_snapshot := pg_current_snapshot();
    oldest xid8;
BEGIN
    IF pg_snapshot_xmin(s) = pg_snapshot_xmax(s) THEN
        RETURN pg_snapshot_xmax(s);
    END IF;
    PERFORM pg_stat_clear_snapshot();
    WITH locks AS MATERIALIZED (
        SELECT locktype, pid, virtualtransaction, transactionid, database, classid, objsubid, mode
          FROM pg_locks
         WHERE locktype IN ('advisory', 'transactionid')
    ),
    announced AS (
        SELECT pid, virtualtransaction
          FROM locks
         WHERE locktype = 'advisory'
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND classid = 1702260340 AND objsubid = 2
    ),
    writers AS (
        SELECT backend.backend_xid::text::bigint AS low
          FROM pg_stat_get_activity(NULL) AS backend
         WHERE backend.pid IN (SELECT pid FROM announced WHERE pid IS NOT NULL)
           AND backend.backend_xid IS NOT NULL
        UNION ALL
        SELECT own.transactionid::text::bigint
          FROM locks own
          JOIN announced USING (virtualtransaction)
         WHERE own.locktype = 'transactionid' AND own.mode = 'ExclusiveLock'
    )
    SELECT min(x) INTO oldest
      FROM pg_snapshot_xip(s) AS x
     WHERE x::text::bigint % 4294967296 IN (SELECT low FROM writers);
    RETURN coalesce(oldest, pg_snapshot_xmax(s));
END;
$$;
