-- Markets, trades (deduplicated on market + sequential_id) and 1-minute candles
-- built from them. Longer intervals are aggregated from candles_1m at query time.
-- The primary keys include the time column so the same tables can become
-- TimescaleDB hypertables (see 0002) with identical queries.

CREATE TABLE markets (
    market        TEXT PRIMARY KEY,
    korean_name   TEXT        NOT NULL DEFAULT '',
    english_name  TEXT        NOT NULL DEFAULT '',
    warning       BOOLEAN     NOT NULL DEFAULT false,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE trades (
    market              TEXT        NOT NULL,
    ts                  TIMESTAMPTZ NOT NULL,
    sequential_id       BIGINT      NOT NULL,
    price               NUMERIC     NOT NULL,
    volume              NUMERIC     NOT NULL,
    ask_bid             TEXT        NOT NULL CHECK (ask_bid IN ('ASK', 'BID')),
    prev_closing_price  NUMERIC     NOT NULL DEFAULT 0,
    change_price        NUMERIC     NOT NULL DEFAULT 0,
    PRIMARY KEY (market, sequential_id, ts)
);
CREATE INDEX trades_recent ON trades (market, ts DESC, sequential_id DESC);

CREATE TABLE candles_1m (
    market         TEXT        NOT NULL,
    bucket         TIMESTAMPTZ NOT NULL,
    open           NUMERIC     NOT NULL,
    high           NUMERIC     NOT NULL,
    low            NUMERIC     NOT NULL,
    close          NUMERIC     NOT NULL,
    volume         NUMERIC     NOT NULL,
    value          NUMERIC     NOT NULL,
    open_ts        TIMESTAMPTZ NOT NULL,
    open_sid       BIGINT      NOT NULL,
    close_ts       TIMESTAMPTZ NOT NULL,
    close_sid      BIGINT      NOT NULL,
    trade_count    INTEGER     NOT NULL,
    PRIMARY KEY (market, bucket)
);
