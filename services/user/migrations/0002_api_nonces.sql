-- Nonces of Upbit-style signed requests, so a captured request cannot be
-- replayed. Rows older than a day are deleted by the service.
CREATE TABLE api_nonces (
    access_key  TEXT        NOT NULL,
    nonce       TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (access_key, nonce)
);
CREATE INDEX api_nonces_by_age ON api_nonces (created_at);
