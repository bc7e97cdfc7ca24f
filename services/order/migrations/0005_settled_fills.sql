-- How many of an order's fills inventory is known to have applied. Recovery
-- settles the open orders where this is behind `trades_count`, and only those:
-- before, it asked inventory about the 200 open orders with fills it had checked
-- longest ago, which were the same 200 on every pass once more than 200 orders
-- were partly filled, so a fill left unsettled on any other waited for its order
-- to end. Rows written before this column (and by the previous release during a
-- rolling upgrade) start at 0: recovery asks inventory about them once.
ALTER TABLE orders ADD COLUMN settled_fills INTEGER NOT NULL DEFAULT 0;
