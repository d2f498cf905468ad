-- Owner: projector (phone_user_directory). Which chatbot (phone) users each tenant has, from their
-- first verified sign-in (`CodeVerified` of a `phone_login`): pseudonymous ids only, no
-- numbers. query-api finds the phone user a WhatsApp contact is by deriving the id from the
-- contact's number as command-api does and looking it up here, instead of reading the command
-- side's `phone_users`. Filled here from the event store, as a rebuild would (the stream
-- keeps 7 days, so the projection's consumer alone would miss older sign-ins); the
-- projection then carries on, each insert idempotent.
CREATE TABLE phone_user_directory (
    user_id text PRIMARY KEY,
    tenant_id text NOT NULL,
    first_signed_in_at timestamptz NOT NULL
);
CREATE INDEX phone_user_directory_tenant ON phone_user_directory (tenant_id);

INSERT INTO phone_user_directory (user_id, tenant_id, first_signed_in_at)
SELECT DISTINCT ON (payload->'CodeVerified'->>'user_id')
       payload->'CodeVerified'->>'user_id',
       metadata->>'tenant_id',
       -- Events keep nanoseconds, which PostgreSQL would round where the projector's bind
       -- truncates to microseconds: cut them, so the fill is what the projection writes.
       regexp_replace(payload->'CodeVerified'->>'at', '(\.[0-9]{6})[0-9]+', '\1')::timestamptz
  FROM events
 WHERE aggregate_type = 'phone_login' AND event_type = 'CodeVerified'
 ORDER BY payload->'CodeVerified'->>'user_id', global_position;

COMMENT ON TABLE phone_user_directory IS 'owner: projector, phone_user_directory.';
COMMENT ON TABLE phone_users IS 'owner: command-api. Phone numbers and profiles of chatbot users (personal data kept out of events, erasable).';
