-- Threads whose agent or department goes away go back to the queue (docs/architecture.md,
-- "References that outlive their target").

-- Why the platform last changed a thread's assignment (`agent_unavailable`,
-- `department_removed`); null when staff chose it. Written by the chat projection.
ALTER TABLE chat_threads ADD COLUMN assignment_reason text;

-- The open threads' agents and departments as the reassignment worker (projection
-- `reassignment`, its owner) learns them from the threads' own events, in the order of the
-- stream it also reads deactivations and department removals from: so a thread assigned a
-- moment before its agent was deactivated is found even while the chat read model is
-- behind. `open` is false once closed (a closed thread keeps who handled it).
CREATE TABLE reassignment_threads (
    thread_id  text    PRIMARY KEY,
    tenant_id  text    NOT NULL,
    agent_id   text,
    department text,
    open       boolean NOT NULL
);
CREATE INDEX reassignment_threads_agent ON reassignment_threads (agent_id)
    WHERE open AND agent_id IS NOT NULL;
CREATE INDEX reassignment_threads_department ON reassignment_threads (tenant_id, department)
    WHERE open AND department IS NOT NULL;

-- The worker starts with new events (like every side-effect worker): what it must know of
-- older threads comes from the chat read model as it stands.
INSERT INTO reassignment_threads (thread_id, tenant_id, agent_id, department, open)
SELECT id::text, tenant_id, agent_id, department, status = 'open'
  FROM chat_threads
 WHERE agent_id IS NOT NULL OR department IS NOT NULL;
