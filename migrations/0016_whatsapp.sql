-- Read models of WhatsApp (`whatsapp_session` and `whatsapp_conversation` events).

-- Connected numbers (their health is read from whatsapp_messages). `credentials` stays
-- sealed: the projector's sender opens it with CREDENTIALS_KEY; query-api never returns it.
CREATE TABLE whatsapp_sessions (
    id                   uuid        PRIMARY KEY,
    tenant_id            text        NOT NULL,
    -- cloud | bridge
    transport            text        NOT NULL,
    phone_number_id      text        NOT NULL,
    business_account_id  text,
    display_phone_number text,
    verified_name        text,
    -- connected | disconnected
    status               text        NOT NULL,
    credentials          text        NOT NULL,
    -- Hex SHA-256 of the webhook verify token (the GET handshake compares against it).
    verify_token_sha256  text        NOT NULL,
    connected_at         timestamptz NOT NULL,
    disconnected_at      timestamptz,
    updated_at           timestamptz NOT NULL,
    version              bigint      NOT NULL
);
CREATE INDEX whatsapp_sessions_tenant ON whatsapp_sessions (tenant_id, connected_at DESC);
CREATE INDEX whatsapp_sessions_verify ON whatsapp_sessions (verify_token_sha256)
    WHERE status = 'connected';

-- A session's exchange with one contact.
CREATE TABLE whatsapp_conversations (
    id              uuid        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    session_id      uuid        NOT NULL,
    wa_id           text        NOT NULL,
    -- The thread the contact's last message went into.
    thread_id       uuid,
    -- The customer-service window closes 24 h after this.
    last_inbound_at timestamptz,
    version         bigint      NOT NULL
);
CREATE INDEX whatsapp_conversations_session ON whatsapp_conversations (session_id, wa_id);

-- Every message either way. Outbound rows are also the sender's queue (`next_attempt_at`).
CREATE TABLE whatsapp_messages (
    id              uuid        PRIMARY KEY,
    conversation_id uuid        NOT NULL,
    tenant_id       text        NOT NULL,
    session_id      uuid        NOT NULL,
    wa_id           text        NOT NULL,
    -- in | out
    direction       text        NOT NULL,
    -- The provider's type: text, image, audio, video, document, sticker, location,
    -- contacts, interactive, button, reaction, template, unsupported …
    kind            text        NOT NULL,
    -- What a thread shows (inbound), or the text, caption or template name (outbound).
    text            text,
    content         jsonb       NOT NULL,
    wamid           text,
    thread_id       uuid,
    author_id       text,
    -- in: received. out: queued | attempting | retrying | sent | delivered | read | failed
    status          text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    error_code      text,
    error           text,
    next_attempt_at timestamptz,
    -- An inbound message's file: stored | failed (NULL while fetching, or no file).
    media_status    text,
    media_key       text,
    media_type      text,
    media_size      bigint,
    media_error     text,
    -- When it was sent (the contact's time for inbound messages).
    created_at      timestamptz NOT NULL,
    -- When it was sent to the provider (outbound), for first-response times.
    sent_at         timestamptz,
    updated_at      timestamptz NOT NULL,
    -- The conversation's version at the row's last change.
    version         bigint      NOT NULL
);
CREATE INDEX whatsapp_messages_due ON whatsapp_messages (next_attempt_at)
    WHERE next_attempt_at IS NOT NULL;
CREATE INDEX whatsapp_messages_session ON whatsapp_messages (session_id, created_at DESC, id DESC);
CREATE INDEX whatsapp_messages_failed ON whatsapp_messages (session_id, updated_at DESC)
    WHERE status = 'failed';
CREATE INDEX whatsapp_messages_conversation ON whatsapp_messages (conversation_id, created_at);
CREATE INDEX whatsapp_messages_wamid ON whatsapp_messages (wamid) WHERE wamid IS NOT NULL;

-- Contacts per tenant, by WhatsApp id, with the profile name they last wrote with. Linked
-- to the phone user with the same number by query (phone_users.phone = '+' || wa_id).
CREATE TABLE whatsapp_contacts (
    tenant_id       text        NOT NULL,
    wa_id           text        NOT NULL,
    phone           text        NOT NULL,
    profile_name    text,
    first_seen_at   timestamptz NOT NULL,
    last_inbound_at timestamptz,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, wa_id)
);
CREATE INDEX whatsapp_contacts_phone ON whatsapp_contacts (tenant_id, phone);

-- command-api finds the conversation a WhatsApp thread belongs to in the store itself (a
-- reply must not wait for a read model): the conversation whose message went into it.
CREATE INDEX events_whatsapp_thread
    ON events ((payload->'MessageReceived'->>'thread_id'))
    WHERE aggregate_type = 'whatsapp_conversation' AND event_type = 'MessageReceived';

-- A status names the platform's message (biz_opaque_callback_data): its conversation is
-- found from the store, whatever id the contact has at the provider.
CREATE INDEX events_whatsapp_queued
    ON events ((payload->'MessageQueued'->>'message_id'))
    WHERE aggregate_type = 'whatsapp_conversation' AND event_type = 'MessageQueued';
