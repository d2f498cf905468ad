-- Audio read model (owner: the projector's `audio` projection), issue 29.
--
-- `status` gains `requesting` (a request is under way; `next_attempt_at` is when its claim
-- lapses). A requested transcript is checked with the service when no webhook finished it:
-- `next_attempt_at` is the next check and `checks` counts them, `last_error` says why the
-- last check could not ask. A transcript too large for its event is in the blob store:
-- `transcript_object_key` names it, `text` is then its first characters and `words` null
-- (query-api reads the file); `transcript_chars` is the whole text's length.
ALTER TABLE audio_files
    ADD COLUMN checks                integer NOT NULL DEFAULT 0,
    ADD COLUMN transcript_object_key text,
    ADD COLUMN transcript_chars      bigint;

-- Transcripts requested before checks existed are checked from now on.
UPDATE audio_files SET next_attempt_at = now()
 WHERE status = 'requested' AND next_attempt_at IS NULL;
