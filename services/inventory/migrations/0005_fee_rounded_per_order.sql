-- Fees are rounded once per order, not once per fill (security review L11).
--
-- A fill's fee was funds × rate rounded down to 8 places, each fill on its own,
-- so an order filled in small enough slices paid no fee at all: on a BTC market
-- at 0.05 %, every slice under 0.00002 BTC rounds to 0. A fill's fee is now what
-- the order's fee on all its executed funds, rounded down once, grows by:
--
--   fee = trunc(funds_after × rate, 8) − trunc(funds_before × rate, 8)
--
-- so the fees of an order add up to trunc(its funds × rate, 8) however it is
-- sliced, and still never exceed what was reserved for them (the reservation
-- rounds the fee on the most it can spend up).
--
-- The per-fill rule of the release before stays accepted as well: its order
-- pods keep sending fees by it during a rolling, canary or blue/green release,
-- and refusing them would refuse their fills. Either way a fee is exact and at
-- most the new rule's total; a later release drops the old rule (contract).
--
-- The 9-argument settle of 0004 is replaced whole; the 8-argument one calls it.

CREATE OR REPLACE FUNCTION settle(
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
    v_funds_before numeric;
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
        v_funds_before := r.executed_funds;
        r.executed_volume := r.executed_volume + v_volume;
        r.executed_funds := r.executed_funds + v_funds;
        IF r.fee_rate IS NOT NULL THEN
            IF v_funds <> v_price * v_volume THEN
                PERFORM refuse_fill(p_order, v_seq, format('funds %s are not price %s × volume %s', v_funds, v_price, v_volume));
            END IF;
            IF v_fee <> trunc(r.executed_funds * r.fee_rate, 8) - trunc(v_funds_before * r.fee_rate, 8)
               AND v_fee <> trunc(v_funds * r.fee_rate, 8) THEN
                PERFORM refuse_fill(p_order, v_seq, format(
                    'fee %s is not what the fee on the order''s funds (%s, then %s) × %s, rounded down to 8 places, grows by',
                    v_fee, v_funds_before, r.executed_funds, r.fee_rate));
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
