-- Snapshots are a cache of aggregate state (command-api's store; docs/architecture.md): the
-- events alone decide, and any snapshot may go.
--
-- Before this version, a commit of several events that ended past a snapshot boundary (say
-- events 99 to 101, snapshots every 100) left a snapshot labelled with the commit's last
-- sequence but holding the state at the boundary, so every later load missed the events
-- after it. Which snapshots are affected cannot be told cheaply, so all go: each aggregate
-- loads from its events once and is snapshotted afresh at its next boundary.
DELETE FROM snapshots;
