DROP TABLE model_key_releases;
ALTER TABLE jobs DROP CONSTRAINT jobs_model_pinned;
ALTER TABLE jobs DROP COLUMN model_sha256;
ALTER TABLE jobs DROP COLUMN model_id;
DROP TABLE models;
