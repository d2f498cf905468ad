-- Owner: projector (phone_user_directory). Which chatbot (phone) users each tenant has, from their
-- first verified sign-in (`CodeVerified` of a `phone_login`): pseudonymous ids only, no
-- numbers. query-api finds the phone user a WhatsApp contact is by deriving the id from the
-- contact's number as command-api does, and the realtime eviction disconnects a suspended
-- tenant's chatbot users from here: neither reads the command side's `phone_users` any more.
CREATE TABLE phone_user_directory (
    user_id text PRIMARY KEY,
    tenant_id text NOT NULL,
    first_signed_in_at timestamptz NOT NULL
);
CREATE INDEX phone_user_directory_tenant ON phone_user_directory (tenant_id);

COMMENT ON TABLE phone_user_directory IS 'owner: projector, phone_user_directory.';
COMMENT ON TABLE phone_users IS 'owner: command-api. Phone numbers and profiles of chatbot users (personal data kept out of events, erasable).';
