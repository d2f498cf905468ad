-- Read model of `audio` events: a file, where its transcript is, and the transcript itself.
-- Also the queue of the transcription process manager (`next_attempt_at`).
CREATE TABLE audio_files (
    id              uuid        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    uploaded_by     text        NOT NULL,
    object_key      text        NOT NULL,
    content_type    text        NOT NULL,
    size_bytes      bigint      NOT NULL,
    -- uploaded | retrying | requested | completed | failed
    status          text        NOT NULL,
    transcript_id   text,
    text            text,
    -- [{text, start_ms, end_ms, confidence}]
    words           jsonb,
    language        text,
    confidence      double precision,
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    -- When the process manager (next) requests the transcript; null otherwise.
    next_attempt_at timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    version         bigint      NOT NULL
);
CREATE INDEX audio_files_due ON audio_files (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX audio_files_tenant ON audio_files (tenant_id, created_at DESC, id DESC);
