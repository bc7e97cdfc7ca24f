-- What the order flow needs beyond 0001: the fee rate each order was placed
-- with, the executions planned before funds were reserved (so a crash between
-- steps can be finished), and whether inventory has finalized the order (all
-- fills settled, the rest released).
ALTER TABLE orders
    ADD COLUMN fee_rate  NUMERIC NOT NULL DEFAULT 0.0005,
    ADD COLUMN plan      JSONB   NOT NULL DEFAULT '[]',
    ADD COLUMN finalized BOOLEAN NOT NULL DEFAULT false;

CREATE INDEX orders_unfinished ON orders (created_at)
    WHERE state = 'pending' OR (NOT finalized AND state IN ('done', 'cancel'));
CREATE INDEX orders_waiting ON orders (market) WHERE state = 'wait';
