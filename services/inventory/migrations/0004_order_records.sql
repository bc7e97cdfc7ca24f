-- Two-commit orders: the order service no longer writes an order before
-- inventory reserves its funds. It calls settle with the order's record (its
-- own JSON, opaque here), which inventory keeps in unconfirmed_orders in the
-- same transaction as the reservation; then it writes the order. A crash in
-- between leaves a reservation with a record and no order: the order service's
-- recovery lists the records older than its placements take
-- (list_unconfirmed), writes those orders, and confirms them (the record is
-- deleted). Nothing is reversed: what inventory executed is what gets written.
--
-- A second attempt at the same order (the order service derives an order's id
-- from its request key, so a retry after a crash has the same id) must carry
-- the same record; another one means the book moved and the retry planned
-- differently: it changes nothing and fails (EX004), and the order service
-- writes the first attempt's record instead.
--
-- Errors raised for callers to map (besides those of 0002 and 0003):
--   EX004 another attempt of the order was executed with another record
--
-- The previous release's 8-argument settle stays, as a call without a record
-- (it writes its orders before calling inventory, so there is nothing to
-- confirm).

CREATE TABLE unconfirmed_orders (
    order_id    UUID PRIMARY KEY,
    user_id     UUID        NOT NULL,
    record      JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX unconfirmed_orders_by_age ON unconfirmed_orders (created_at);

CREATE FUNCTION settle(
    p_order uuid, p_user uuid, p_side text, p_base text, p_quote text,
    p_fills jsonb, p_finalize boolean, p_terms jsonb, p_record jsonb
) RETURNS TABLE (fills_applied integer, released numeric)
LANGUAGE plpgsql AS $$
DECLARE
    r reservations;
    f jsonb;
    v_seq integer;
    v_price numeric;
    v_volume numeric;
    v_funds numeric;
    v_fee numeric;
    v_lock numeric;
    v_lock_currency text;
    v_applied integer := 0;
    v_released numeric := 0;
    v_holding numeric;
    v_record jsonb;
BEGIN
    IF p_side NOT IN ('bid', 'ask') THEN
        RAISE EXCEPTION 'side must be bid or ask' USING ERRCODE = '22023';
    END IF;
    v_lock_currency := CASE p_side WHEN 'bid' THEN p_quote ELSE p_base END;
    -- Lock both balances in one order (by currency) so that concurrent settles of
    -- the same user cannot deadlock; this also serialises a first call's
    -- reservation with any other call for the same user.
    INSERT INTO balances (user_id, currency) VALUES (p_user, p_base) ON CONFLICT DO NOTHING;
    PERFORM 1 FROM balances WHERE user_id = p_user AND currency IN (p_base, p_quote)
        ORDER BY currency FOR UPDATE;
    SELECT * INTO r FROM reservations WHERE order_id = p_order FOR UPDATE;
    IF NOT FOUND THEN
        IF p_terms IS NULL THEN
            RAISE EXCEPTION 'no reservation for order %', p_order USING ERRCODE = 'P0002';
        END IF;
        IF p_terms ->> 'not_after' IS NOT NULL
           AND clock_timestamp() > (p_terms ->> 'not_after')::timestamptz THEN
            RAISE EXCEPTION 'the reservation of order % was due by %', p_order, p_terms ->> 'not_after'
                USING ERRCODE = 'EX002';
        END IF;
        v_lock := (p_terms ->> 'lock')::numeric;
        IF v_lock IS NULL OR v_lock <= 0 THEN
            RAISE EXCEPTION 'the amount to lock must be positive' USING ERRCODE = '22023';
        END IF;
        UPDATE balances SET available = available - v_lock, locked = locked + v_lock
            WHERE user_id = p_user AND currency = v_lock_currency;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no % balance', v_lock_currency
                USING ERRCODE = '23514', CONSTRAINT = 'balances_available_non_negative';
        END IF;
        INSERT INTO ledger (user_id, currency, available_delta, locked_delta, kind, order_id, step)
        VALUES (p_user, v_lock_currency, -v_lock, v_lock, 'reserve', p_order, 'reserve');
        INSERT INTO reservations (order_id, user_id, currency, reserved, locked, side, kind,
                                  limit_price, max_volume, budget, fee_rate)
        VALUES (p_order, p_user, v_lock_currency, v_lock, v_lock, p_side, p_terms ->> 'kind',
                (p_terms ->> 'price')::numeric, (p_terms ->> 'volume')::numeric,
                (p_terms ->> 'budget')::numeric, (p_terms ->> 'fee_rate')::numeric)
        RETURNING * INTO r;
        IF p_record IS NOT NULL THEN
            INSERT INTO unconfirmed_orders (order_id, user_id, record) VALUES (p_order, p_user, p_record);
        END IF;
    ELSIF p_terms IS NOT NULL AND p_record IS NOT NULL THEN
        -- Another attempt at the same order: it must be the one executed.
        SELECT record INTO v_record FROM unconfirmed_orders WHERE order_id = p_order;
        IF FOUND AND v_record <> p_record THEN
            RAISE EXCEPTION 'order % was executed already with another plan', p_order
                USING ERRCODE = 'EX004';
        END IF;
    END IF;
    IF r.user_id <> p_user OR r.currency <> v_lock_currency OR r.side <> p_side THEN
        RAISE EXCEPTION 'reservation of order % does not match', p_order USING ERRCODE = '22023';
    END IF;
    FOR f IN SELECT value FROM jsonb_array_elements(p_fills) ORDER BY (value ->> 'seq')::integer LOOP
        v_seq := (f ->> 'seq')::integer;
        CONTINUE WHEN v_seq <= r.last_fill_seq;
        IF v_seq <> r.last_fill_seq + 1 THEN
            RAISE EXCEPTION 'fill % of order % arrived before fill %', v_seq, p_order, r.last_fill_seq + 1
                USING ERRCODE = '22023';
        END IF;
        IF r.released THEN
            RAISE EXCEPTION 'order % is already finalized', p_order USING ERRCODE = '22023';
        END IF;
        v_price := (f ->> 'price')::numeric;
        v_volume := (f ->> 'volume')::numeric;
        v_funds := (f ->> 'funds')::numeric;
        v_fee := (f ->> 'fee')::numeric;
        IF v_price <= 0 OR v_volume <= 0 OR v_funds <= 0 OR v_fee < 0 THEN
            PERFORM refuse_fill(p_order, v_seq, 'price, volume and funds must be positive, the fee not negative');
        END IF;
        r.executed_volume := r.executed_volume + v_volume;
        r.executed_funds := r.executed_funds + v_funds;
        IF r.fee_rate IS NOT NULL THEN
            IF v_funds <> v_price * v_volume THEN
                PERFORM refuse_fill(p_order, v_seq, format('funds %s are not price %s × volume %s', v_funds, v_price, v_volume));
            END IF;
            IF v_fee <> trunc(v_funds * r.fee_rate, 8) THEN
                PERFORM refuse_fill(p_order, v_seq, format('fee %s is not funds × %s rounded down to 8 places', v_fee, r.fee_rate));
            END IF;
            IF (p_side = 'bid' AND v_price > r.limit_price) OR (p_side = 'ask' AND v_price < r.limit_price) THEN
                PERFORM refuse_fill(p_order, v_seq, format('price %s is beyond the limit %s', v_price, r.limit_price));
            END IF;
            IF r.max_volume IS NOT NULL AND r.executed_volume > r.max_volume THEN
                PERFORM refuse_fill(p_order, v_seq, format('fills add up to volume %s, more than the order''s %s', r.executed_volume, r.max_volume));
            END IF;
            IF r.budget IS NOT NULL AND r.executed_funds > r.budget THEN
                PERFORM refuse_fill(p_order, v_seq, format('fills add up to funds %s, more than the order''s %s', r.executed_funds, r.budget));
            END IF;
        END IF;
        IF p_side = 'bid' THEN
            r.locked := r.locked - v_funds - v_fee;
            PERFORM move_balance(p_user, p_quote, 0, -v_funds, 'settle', p_order, 'fill:' || v_seq);
            IF v_fee > 0 THEN
                PERFORM move_balance(p_user, p_quote, 0, -v_fee, 'fee', p_order, 'fill:' || v_seq);
            END IF;
            -- The base's average buy price follows what was paid (fees excluded).
            SELECT available + locked INTO v_holding FROM balances
                WHERE user_id = p_user AND currency = p_base FOR UPDATE;
            v_holding := coalesce(v_holding, 0);
            UPDATE balances
                SET avg_buy_price = round((v_holding * avg_buy_price + v_funds) / (v_holding + v_volume), 8)
                WHERE user_id = p_user AND currency = p_base;
            PERFORM move_balance(p_user, p_base, v_volume, 0, 'settle', p_order, 'fill:' || v_seq);
        ELSE
            r.locked := r.locked - v_volume;
            PERFORM move_balance(p_user, p_base, 0, -v_volume, 'settle', p_order, 'fill:' || v_seq);
            PERFORM move_balance(p_user, p_quote, v_funds, 0, 'settle', p_order, 'fill:' || v_seq);
            IF v_fee > 0 THEN
                PERFORM move_balance(p_user, p_quote, -v_fee, 0, 'fee', p_order, 'fill:' || v_seq);
            END IF;
        END IF;
        IF r.locked < 0 THEN
            PERFORM refuse_fill(p_order, v_seq, 'the fills exceed what the order locked');
        END IF;
        r.last_fill_seq := v_seq;
        v_applied := v_applied + 1;
    END LOOP;
    IF p_finalize AND NOT r.released THEN
        v_released := r.locked;
        IF v_released > 0 THEN
            PERFORM move_balance(p_user, v_lock_currency, v_released, -v_released, 'release', p_order, 'release');
        END IF;
        r.locked := 0;
        r.released := true;
    END IF;
    UPDATE reservations
        SET locked = r.locked, last_fill_seq = r.last_fill_seq, released = r.released,
            executed_volume = r.executed_volume, executed_funds = r.executed_funds
        WHERE order_id = p_order;
    RETURN QUERY SELECT v_applied, v_released;
END;
$$;

CREATE OR REPLACE FUNCTION settle(
    p_order uuid, p_user uuid, p_side text, p_base text, p_quote text,
    p_fills jsonb, p_finalize boolean, p_terms jsonb
) RETURNS TABLE (fills_applied integer, released numeric)
LANGUAGE sql AS $$
    SELECT * FROM settle(p_order, p_user, p_side, p_base, p_quote, p_fills, p_finalize, p_terms, NULL::jsonb);
$$;
