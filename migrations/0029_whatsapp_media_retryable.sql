-- An inbound file refused because the session's access token was (`MediaFailed` with
-- `retryable`): shown failed, and fetched again — its delivery replayed by the projector's
-- `whatsapp-media-refetch` worker — when the tenant connects the session again. Written by
-- the `whatsapp` projection.
ALTER TABLE whatsapp_messages ADD COLUMN media_retryable boolean NOT NULL DEFAULT false;
CREATE INDEX whatsapp_messages_media_retryable ON whatsapp_messages (session_id)
    WHERE media_retryable;
