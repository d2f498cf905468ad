-- Webhook rejections an admin can replay (owner: command-api), issue 29.
--
-- A refused webhook is no record of anything, so the log keeps only what diagnosis needs
-- (the body's shape and digest, migration 0021). To let a super admin process it once the
-- cause is fixed (a rotated secret set, a URL corrected), the request itself — path and
-- query, the headers a verification reads, and the body of at most 256 KiB — is kept
-- sealed (XChaCha20-Poly1305 under the credentials key) for 7 days, then erased by the
-- hourly purge: `sealed_request` is null past `replayable_until`.
ALTER TABLE webhook_rejections
    ADD COLUMN sealed_request      text,
    ADD COLUMN replayable_until    timestamptz,
    -- When a replay passed verification, and the webhook it became.
    ADD COLUMN replayed_at         timestamptz,
    ADD COLUMN replayed_webhook_id text;
