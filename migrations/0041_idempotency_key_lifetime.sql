-- An Idempotency-Key lives 24 hours from the last time a request under it ran; after that it
-- is a new key, exactly as if it had never been seen, whether or not the hourly purge has
-- removed its row yet. Each claim of a key draws a `nonce`, kept while the key lives
-- (retries and takeovers share it) and drawn afresh when an expired row is claimed again: ids derived from the key
-- (`KeyedRequest::derived_id`) include it, so a key used again after it expired opens a new
-- aggregate instead of finding the old one. Rows claimed before this migration have none and
-- keep the earlier derivation until they expire.
ALTER TABLE idempotency_keys ADD COLUMN nonce uuid;
