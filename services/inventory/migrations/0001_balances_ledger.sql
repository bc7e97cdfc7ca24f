-- Balances per (user, currency), an append-only ledger, and the idempotency keys
-- of reserve/release/settle steps. Amounts are NUMERIC; the service keeps them to
-- at most 16 decimal places so they fit rust_decimal exactly.

CREATE TABLE accounts (
    user_id    UUID PRIMARY KEY,
    opened_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE balances (
    user_id        UUID    NOT NULL REFERENCES accounts (user_id),
    currency       TEXT    NOT NULL,
    available      NUMERIC NOT NULL DEFAULT 0,
    locked         NUMERIC NOT NULL DEFAULT 0,
    avg_buy_price  NUMERIC NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, currency),
    CONSTRAINT balances_available_non_negative CHECK (available >= 0),
    CONSTRAINT balances_locked_non_negative CHECK (locked >= 0)
);

CREATE TABLE ledger (
    id               BIGSERIAL PRIMARY KEY,
    user_id          UUID        NOT NULL,
    currency         TEXT        NOT NULL,
    available_delta  NUMERIC     NOT NULL,
    locked_delta     NUMERIC     NOT NULL,
    kind             TEXT        NOT NULL,
    order_id         UUID,
    step             TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ledger_by_user ON ledger (user_id, id DESC);
CREATE INDEX ledger_by_order ON ledger (order_id) WHERE order_id IS NOT NULL;

-- One row per order with funds reserved.
CREATE TABLE reservations (
    order_id       UUID PRIMARY KEY,
    user_id        UUID        NOT NULL,
    currency       TEXT        NOT NULL,
    reserved       NUMERIC     NOT NULL,
    locked         NUMERIC     NOT NULL,
    last_fill_seq  INTEGER     NOT NULL DEFAULT 0,
    released       BOOLEAN     NOT NULL DEFAULT false,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT reservations_locked_non_negative CHECK (locked >= 0)
);

-- Idempotency: each (order, step) or deposit key is applied once.
CREATE TABLE operations (
    key         TEXT PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
