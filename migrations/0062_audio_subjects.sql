-- A recording about a person (the customer of the thread it was uploaded for, or the
-- chatbot user who uploaded it) names them as its data subject (`AudioUploaded.subject`,
-- docs/privacy.md): its transcript is sealed for them, and their erasure overwrites what
-- this read model holds of it.
ALTER TABLE audio_files ADD COLUMN subject_id uuid;
CREATE INDEX audio_files_subject ON audio_files (subject_id) WHERE subject_id IS NOT NULL;
COMMENT ON COLUMN audio_files.subject_id IS 'owner: projector. The data subject the recording is about (AudioUploaded.subject); null for the tenant''s own recordings.';
