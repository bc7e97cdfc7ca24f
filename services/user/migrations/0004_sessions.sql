-- Sessions: one per sign-in. Its refresh tokens chain from it and its access
-- tokens name it (`sid`), so it can end on its own — on logout, or when one of
-- its spent refresh tokens comes back (a sign the chain was stolen) — without
-- ending the user's other sessions.

CREATE TABLE sessions (
    id          UUID PRIMARY KEY,
    user_id     UUID        NOT NULL REFERENCES users (id),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX sessions_by_user ON sessions (user_id);

-- Refresh tokens issued before sessions existed belong to none: they are
-- dropped, so this upgrade signs everyone out once (access tokens without a
-- session are refused too; they lived 15 minutes at most).
DELETE FROM refresh_tokens;
ALTER TABLE refresh_tokens
    ADD COLUMN session_id UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE;
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);
