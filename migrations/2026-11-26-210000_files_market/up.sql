-- The market an uploaded batch file was validated for (its lines carry that market's inputs), so
-- a job can only use a file in the market it was checked against; and the studio's free-form
-- job metadata (OpenAI Batch API style: at most 16 string pairs, checked by the API).
ALTER TABLE files ADD COLUMN market text CHECK (market ~ '^[A-Z0-9-]{1,64}$');
ALTER TABLE jobs ADD COLUMN metadata jsonb;
