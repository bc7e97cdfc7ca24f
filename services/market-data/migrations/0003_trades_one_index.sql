-- One index for trades instead of two: the primary key becomes (market, ts,
-- sequential_id), which serves the newest-first reads by scanning backwards, so
-- trades_recent goes. Uniqueness is unchanged: the key already held all three
-- columns (TimescaleDB requires the time column in it), and a trade's
-- timestamp never changes. Each insert now maintains one B-tree, not two.
ALTER TABLE trades DROP CONSTRAINT trades_pkey;
ALTER TABLE trades ADD PRIMARY KEY (market, ts, sequential_id);
DROP INDEX trades_recent;
