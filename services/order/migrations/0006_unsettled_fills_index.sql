-- no-transaction
-- Recovery's list of open orders with fills inventory may not have applied
-- (normally empty). Built without blocking writes to `orders`: a concurrent
-- build cannot run in a transaction, hence a migration of its own.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_unsettled_fills ON orders (updated_at)
    WHERE state = 'wait' AND trades_count > settled_fills;
