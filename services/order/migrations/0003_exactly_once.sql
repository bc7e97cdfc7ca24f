-- Exactly-once orders and fills:
--
-- * request_key: the idempotency key of the placing request (the gateway
--   derives it from the HTTP request, whose retries carry the same one). A
--   retry finds the order the first request made instead of making another.
-- * plan_deadline: the time (the database's clock) by which inventory must have
--   reserved the order's funds for its plan; inventory refuses later. Recovery
--   waits until it has passed, then either completes the plan inventory
--   executed or, if inventory never did, plans the order again against the
--   current book.
-- * opened_at: when the order was confirmed (left PENDING).
-- * executions.trade_id: the market trade (sequential id) that filled a resting
--   order, so a trade replayed after the matcher's stream broke, or after a new
--   matcher took over, never fills the same order twice.
-- * matcher_cursors: the last trade the matcher processed per market, from
--   which a new matcher catches up.

ALTER TABLE orders
    ADD COLUMN request_key   TEXT,
    ADD COLUMN plan_deadline TIMESTAMPTZ,
    ADD COLUMN opened_at     TIMESTAMPTZ,
    ADD CONSTRAINT orders_request_key_unique UNIQUE (user_id, request_key);

CREATE INDEX orders_open_by_user ON orders (user_id) WHERE state IN ('pending', 'wait');

-- Recovery takes the orders it has waited longest to retry first.
DROP INDEX orders_unfinished;
CREATE INDEX orders_unfinished ON orders (updated_at)
    WHERE state = 'pending' OR (NOT finalized AND state IN ('done', 'cancel'));

ALTER TABLE executions ADD COLUMN trade_id BIGINT;
CREATE UNIQUE INDEX executions_once_per_trade ON executions (order_id, trade_id)
    WHERE trade_id IS NOT NULL;
CREATE INDEX executions_by_trade ON executions (trade_id) WHERE trade_id IS NOT NULL;

CREATE TABLE matcher_cursors (
    market         TEXT PRIMARY KEY,
    -- trade_timestamp of the last trade processed, epoch ms
    trade_ts       BIGINT      NOT NULL,
    sequential_id  BIGINT      NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
