-- Realtime events are delivered to members, not to channels (docs/realtime.md): for each
-- event the realtime worker names the signed-in connections that may see it now — the live,
-- unrevoked sessions of the tenant's staff and the thread's customers — so that an access
-- revoked after a subscription was authorised receives nothing more.

-- Who the customers of each thread are, as the realtime worker (projection `realtime`, its
-- owner) learns it from the thread's own events: written with the worker's checkpoint, so a
-- message sent right after a thread was opened reaches its customer even while the chat read
-- model is still behind. Threads opened before the worker started are found in
-- chat_participants instead.
CREATE TABLE realtime_thread_customers (
    thread_id text NOT NULL,
    user_id   text NOT NULL,
    PRIMARY KEY (thread_id, user_id)
);

-- A tenant's staff sessions, found through their users: the worker asks for them for every
-- batch of events, and revoking a user's sessions looks them up by user.
CREATE INDEX admin_sessions_user ON admin_sessions (user_id, created_at);
CREATE INDEX admin_emails_tenant ON admin_emails (tenant_id);
