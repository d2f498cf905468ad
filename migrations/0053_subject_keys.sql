-- Personal data sealed per data subject (docs/privacy.md). Command side: the data keys that
-- seal a subject's personal fields, each sealed under a master key from the settings.
-- Destroying a subject's keys is erasing them: every field sealed with them reads as
-- "[erased]" from then on, in the store, on the bus and in any rebuild.

-- Every person the platform holds data about, with the tenant whose data it is.
CREATE TABLE data_subjects (
    subject_id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    -- phone_user, contact, admin_user, customer
    kind text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Set once, when the subject's keys were destroyed; no key is made for them again.
    erased_at timestamptz
);

CREATE INDEX data_subjects_tenant ON data_subjects (tenant_id, kind);

-- A subject's data keys (usually one; two processes making a subject's first key at once
-- make two, and both stay usable). `sealed_key` is the key under master key
-- `master_key_id` (XChaCha20-Poly1305, the sealed form of events::sealed).
CREATE TABLE subject_keys (
    key_id uuid PRIMARY KEY,
    subject_id uuid NOT NULL REFERENCES data_subjects (subject_id),
    master_key_id text NOT NULL,
    sealed_key text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX subject_keys_subject ON subject_keys (subject_id, created_at DESC);
CREATE INDEX subject_keys_master ON subject_keys (master_key_id);

COMMENT ON TABLE data_subjects IS 'owner: command-api. The people personal data is about, their tenant, and whether they were erased. read by query-api: through events::keyring, to open personal fields and to export a subject''s data (the projector opens through it too).';
COMMENT ON TABLE subject_keys IS 'owner: command-api. Data keys of personal fields, sealed under a master key; destroyed on erasure. read by query-api: through events::keyring, to open personal fields (the projector opens through it too).';
