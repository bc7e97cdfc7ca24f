-- API keys get Upbit's permissions and an expiry; nonces are kept while their
-- key can still verify a token, so a captured token never replays.

ALTER TABLE api_keys
    ADD COLUMN permissions TEXT[] NOT NULL
        DEFAULT ARRAY['view_accounts', 'view_orders', 'make_orders'];

-- Keys made before expiry existed get Upbit's one year from their creation.
UPDATE api_keys SET expire_at = created_at + interval '365 days' WHERE expire_at IS NULL;
ALTER TABLE api_keys ALTER COLUMN expire_at SET NOT NULL;

-- Nonces are forgotten only with their key (expired or revoked), never by age.
DROP INDEX IF EXISTS api_nonces_by_age;

-- Expired refresh tokens are swept (housekeeping) by this index.
CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expires_at);
