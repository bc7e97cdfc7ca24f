-- Upbit's `best` orders, `time_in_force` and `smp_type`.
ALTER TABLE orders DROP CONSTRAINT orders_ord_type_check;
ALTER TABLE orders ADD CONSTRAINT orders_ord_type_check
    CHECK (ord_type IN ('limit', 'price', 'market', 'best'));
ALTER TABLE orders ADD COLUMN time_in_force TEXT
    CHECK (time_in_force IN ('ioc', 'fok', 'post_only'));
ALTER TABLE orders ADD COLUMN smp_type TEXT
    CHECK (smp_type IN ('cancel_maker', 'cancel_taker', 'reduce', 'none'));
