-- Read models of the chat context, built by the projector from `thread` events. Every row
-- carries tenant_id (invariant 6); a deleted message keeps its row as a tombstone without
-- text or attachment.

-- One row per thread: what the inbox lists and sorts.
CREATE TABLE chat_threads (
    id               uuid        PRIMARY KEY,
    tenant_id        text        NOT NULL,
    -- web | whatsapp | sms
    channel          text        NOT NULL,
    -- open | closed
    status           text        NOT NULL,
    subject          text,
    -- The phone user (or contact) the thread is with, if any.
    customer_id      text,
    opened_by        text        NOT NULL,
    agent_id         text,
    department       text,
    bot_enabled      boolean     NOT NULL,
    tags             text[]      NOT NULL DEFAULT '{}',
    -- Number of the last message (messages are numbered 1, 2, … per thread).
    message_count    bigint      NOT NULL DEFAULT 0,
    -- The last message that is not deleted, for the inbox preview.
    last_message     jsonb,
    -- The last message or state change: the inbox's sort key.
    last_activity_at timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    version          bigint      NOT NULL
);
CREATE INDEX chat_threads_inbox ON chat_threads (tenant_id, last_activity_at DESC, id DESC);
CREATE INDEX chat_threads_customer ON chat_threads (customer_id, last_activity_at DESC, id DESC);
CREATE INDEX chat_threads_agent ON chat_threads (tenant_id, agent_id, last_activity_at DESC);

-- Who takes part in each thread (customers may read only these threads).
CREATE TABLE chat_participants (
    thread_id uuid        NOT NULL,
    user_id   text        NOT NULL,
    tenant_id text        NOT NULL,
    -- phone | agent
    kind      text        NOT NULL,
    joined_at timestamptz NOT NULL,
    PRIMARY KEY (thread_id, user_id)
);
CREATE INDEX chat_participants_user ON chat_participants (user_id);

-- Messages, newest-first pages by number.
CREATE TABLE chat_messages (
    thread_id         uuid        NOT NULL,
    number            bigint      NOT NULL,
    message_id        text        NOT NULL,
    tenant_id         text        NOT NULL,
    author_id         text        NOT NULL,
    -- phone | agent | bot | system
    author_kind       text        NOT NULL,
    -- NULL once deleted.
    text              text,
    attachment        jsonb,
    client_message_id text,
    scheduled_id      text,
    sent_at           timestamptz NOT NULL,
    edited_at         timestamptz,
    deleted_at        timestamptz,
    PRIMARY KEY (thread_id, number),
    UNIQUE (thread_id, message_id)
);

-- How far each reader has read each thread (a reader's own messages count as read).
CREATE TABLE chat_reads (
    thread_id   uuid        NOT NULL,
    reader_id   text        NOT NULL,
    tenant_id   text        NOT NULL,
    reader_kind text        NOT NULL,
    last_read   bigint      NOT NULL,
    read_at     timestamptz NOT NULL,
    PRIMARY KEY (thread_id, reader_id)
);

-- Scheduled messages; the scheduler delivers the pending ones that are due.
CREATE TABLE chat_scheduled (
    thread_id    uuid        NOT NULL,
    id           text        NOT NULL,
    tenant_id    text        NOT NULL,
    author_id    text        NOT NULL,
    text         text        NOT NULL,
    attachment   jsonb,
    due_at       timestamptz NOT NULL,
    -- pending | delivered | cancelled
    status       text        NOT NULL,
    message_id   text,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (thread_id, id)
);
CREATE INDEX chat_scheduled_due ON chat_scheduled (due_at) WHERE status = 'pending';
CREATE INDEX chat_scheduled_thread ON chat_scheduled (thread_id, due_at);
