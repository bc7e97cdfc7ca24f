-- Orders and their executions. An order is written PENDING first (with the
-- client's idempotency key), then WAIT once inventory holds its funds.

CREATE TABLE orders (
    id                 UUID PRIMARY KEY,
    user_id            UUID        NOT NULL,
    identifier         TEXT,
    market             TEXT        NOT NULL,
    side               TEXT        NOT NULL CHECK (side IN ('bid', 'ask')),
    ord_type           TEXT        NOT NULL CHECK (ord_type IN ('limit', 'price', 'market')),
    price              NUMERIC,
    volume             NUMERIC,
    state              TEXT        NOT NULL CHECK (state IN ('pending', 'wait', 'done', 'cancel', 'rejected')),
    reserved_currency  TEXT        NOT NULL,
    reserved_amount    NUMERIC     NOT NULL DEFAULT 0,
    executed_volume    NUMERIC     NOT NULL DEFAULT 0,
    executed_funds     NUMERIC     NOT NULL DEFAULT 0,
    paid_fee           NUMERIC     NOT NULL DEFAULT 0,
    trades_count       INTEGER     NOT NULL DEFAULT 0,
    reject_reason      TEXT,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT orders_identifier_unique UNIQUE (user_id, identifier)
);
CREATE INDEX orders_by_user ON orders (user_id, created_at DESC);
CREATE INDEX orders_open_by_market ON orders (market) WHERE state IN ('pending', 'wait');

CREATE TABLE executions (
    order_id    UUID        NOT NULL REFERENCES orders (id),
    seq         INTEGER     NOT NULL,
    price       NUMERIC     NOT NULL,
    volume      NUMERIC     NOT NULL,
    funds       NUMERIC     NOT NULL,
    fee         NUMERIC     NOT NULL,
    trend       TEXT        NOT NULL CHECK (trend IN ('bid', 'ask')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, seq)
);
