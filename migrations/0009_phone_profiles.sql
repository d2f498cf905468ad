-- Phone users' profiles: personal data, kept beside the number where it can be erased. Events
-- only say which fields changed.
ALTER TABLE phone_users
    ADD COLUMN display_name text,
    ADD COLUMN email        text,
    ADD COLUMN locale       text,
    ADD COLUMN updated_at   timestamptz NOT NULL DEFAULT now();
