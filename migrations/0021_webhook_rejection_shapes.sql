-- Rejected webhooks keep the shape of their body, never its content.
--
-- A webhook refused at verification was never accepted, yet its body may carry customer data
-- (an SMS text and number, a payer's name): keeping its first 2 KiB for diagnosis kept that
-- data outside every erasure. From now on `body_excerpt` holds the body's shape only — its
-- JSON keys or form field names, no value — and `body_sha256` its digest, to match it with
-- the provider's own delivery log. The excerpts already kept are blanked.
ALTER TABLE webhook_rejections ADD COLUMN body_sha256 text;
UPDATE webhook_rejections SET body_excerpt = '[removed: bodies are no longer kept]';
