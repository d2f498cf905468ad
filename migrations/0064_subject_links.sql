-- The subjects one person is (docs/privacy.md, "one person, one erasure": a phone user and
-- the contact of their number at the tenant, and the platform's contact of the number),
-- as an erasure found them. Kept because the number that links them is gone once the
-- first of them is erased: an erasure asked again from any side, after a failure, reaches
-- every subject of the person. Ids only, no personal data.
CREATE TABLE subject_links (
    subject_id uuid NOT NULL,
    linked_id  uuid NOT NULL,
    PRIMARY KEY (subject_id, linked_id)
);
COMMENT ON TABLE subject_links IS 'owner: command-api. The other subjects of the same person, as an erasure found them (migration 0064).';
