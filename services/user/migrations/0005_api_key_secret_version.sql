-- Which API_KEY_SECRET a key's secret is derived from, so the master key can be
-- rotated: new keys use the current version; older keys verify while their
-- version is still configured (API_KEY_RETIRED_SECRETS), and stop when it is not.
ALTER TABLE api_keys ADD COLUMN secret_version SMALLINT NOT NULL DEFAULT 1;
