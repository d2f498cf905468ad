-- Relays are no longer woken by a trigger inside the appending transaction. PostgreSQL
-- serialises the commits of transactions that NOTIFY (a database-wide lock taken before the
-- commit and held until it is flushed), so with the trigger every command waited for every
-- other command's WAL flush and group commit never happened: under load, commits queued on
-- that lock. The command bus wakes its own process's relay in-process; a process whose relay
-- stands by sends the NOTIFY itself, after the commit (command-api `relay::forward_commits`).
DROP TRIGGER events_appended ON events;
DROP FUNCTION events_notify();
