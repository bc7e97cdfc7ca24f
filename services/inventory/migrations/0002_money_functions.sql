-- Every balance change is one of these functions, called as one statement (one
-- transaction, one round trip). Each writes the balance rows and their ledger
-- rows together, and each is idempotent: by (order, step) for orders, by the
-- client's key for deposits.
--
-- Errors raised for callers to map:
--   23514 check_violation on balances_available_non_negative → insufficient funds
--   P0002 no_data_found                                       → no such reservation/account
--   22023 invalid_parameter_value                              → inconsistent request

-- Adds (signed) deltas to one balance and records them in the ledger.
CREATE FUNCTION move_balance(
    p_user uuid, p_currency text, p_available numeric, p_locked numeric,
    p_kind text, p_order uuid, p_step text
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- Update first: an upsert would check the deltas themselves against the
    -- non-negative constraints.
    UPDATE balances SET available = available + p_available, locked = locked + p_locked
        WHERE user_id = p_user AND currency = p_currency;
    IF NOT FOUND THEN
        INSERT INTO balances (user_id, currency, available, locked)
        VALUES (p_user, p_currency, p_available, p_locked);
    END IF;
    INSERT INTO ledger (user_id, currency, available_delta, locked_delta, kind, order_id, step)
    VALUES (p_user, p_currency, p_available, p_locked, p_kind, p_order, p_step);
END;
$$;

-- Opens an account with the initial KRW balance, once.
CREATE FUNCTION open_account(p_user uuid, p_initial numeric) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO accounts (user_id) VALUES (p_user) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM move_balance(p_user, 'KRW', p_initial, 0, 'open_account', NULL, NULL);
    RETURN true;
END;
$$;

-- Paper faucet: credits a deposit once per key, keeping available + locked of
-- the currency at or under p_cap.
CREATE FUNCTION deposit(p_user uuid, p_currency text, p_amount numeric, p_key text, p_cap numeric)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_total numeric;
BEGIN
    IF p_amount <= 0 THEN
        RAISE EXCEPTION 'amount must be positive' USING ERRCODE = '22023';
    END IF;
    PERFORM 1 FROM accounts WHERE user_id = p_user;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no account' USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO operations (key) VALUES ('deposit:' || p_user || ':' || p_key) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    SELECT available + locked INTO v_total FROM balances
        WHERE user_id = p_user AND currency = p_currency FOR UPDATE;
    IF coalesce(v_total, 0) + p_amount > p_cap THEN
        RAISE EXCEPTION 'deposit would exceed the cap of %', p_cap USING ERRCODE = '22023';
    END IF;
    PERFORM move_balance(p_user, p_currency, p_amount, 0, 'deposit', NULL, p_key);
    RETURN true;
END;
$$;

-- Moves p_amount of p_currency from available to locked for an order, once.
CREATE FUNCTION reserve(p_order uuid, p_user uuid, p_currency text, p_amount numeric)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF p_amount <= 0 THEN
        RAISE EXCEPTION 'amount must be positive' USING ERRCODE = '22023';
    END IF;
    INSERT INTO operations (key) VALUES ('reserve:' || p_order) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE balances SET available = available - p_amount, locked = locked + p_amount
        WHERE user_id = p_user AND currency = p_currency;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no % balance', p_currency
            USING ERRCODE = '23514', CONSTRAINT = 'balances_available_non_negative';
    END IF;
    INSERT INTO ledger (user_id, currency, available_delta, locked_delta, kind, order_id, step)
    VALUES (p_user, p_currency, -p_amount, p_amount, 'reserve', p_order, 'reserve');
    INSERT INTO reservations (order_id, user_id, currency, reserved, locked)
    VALUES (p_order, p_user, p_currency, p_amount, p_amount);
    RETURN true;
END;
$$;

-- Applies an order's fills in sequence (each once: fills up to the reservation's
-- last_fill_seq are skipped), then on p_finalize releases what is still locked.
-- With p_reserve, first reserves that amount (once) in the same transaction.
-- p_fills: [{"seq":1,"price":"…","volume":"…","funds":"…","fee":"…"}, …]
CREATE FUNCTION settle(
    p_order uuid, p_user uuid, p_side text, p_base text, p_quote text,
    p_fills jsonb, p_finalize boolean, p_reserve numeric
) RETURNS TABLE (fills_applied integer, released numeric)
LANGUAGE plpgsql AS $$
DECLARE
    r reservations;
    f jsonb;
    v_seq integer;
    v_volume numeric;
    v_funds numeric;
    v_fee numeric;
    v_lock_currency text;
    v_applied integer := 0;
    v_released numeric := 0;
    v_holding numeric;
BEGIN
    IF p_side NOT IN ('bid', 'ask') THEN
        RAISE EXCEPTION 'side must be bid or ask' USING ERRCODE = '22023';
    END IF;
    v_lock_currency := CASE p_side WHEN 'bid' THEN p_quote ELSE p_base END;
    -- Lock both balances in one order (by currency) so that concurrent settles of
    -- the same user cannot deadlock.
    INSERT INTO balances (user_id, currency) VALUES (p_user, p_base) ON CONFLICT DO NOTHING;
    PERFORM 1 FROM balances WHERE user_id = p_user AND currency IN (p_base, p_quote)
        ORDER BY currency FOR UPDATE;
    IF p_reserve IS NOT NULL THEN
        PERFORM reserve(p_order, p_user, v_lock_currency, p_reserve);
    END IF;
    SELECT * INTO r FROM reservations WHERE order_id = p_order FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no reservation for order %', p_order USING ERRCODE = 'P0002';
    END IF;
    IF r.user_id <> p_user OR r.currency <> v_lock_currency THEN
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
        v_volume := (f ->> 'volume')::numeric;
        v_funds := (f ->> 'funds')::numeric;
        v_fee := (f ->> 'fee')::numeric;
        IF v_volume <= 0 OR v_funds <= 0 OR v_fee < 0 THEN
            RAISE EXCEPTION 'fill % of order % is not positive', v_seq, p_order USING ERRCODE = '22023';
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
            INSERT INTO balances AS b (user_id, currency, avg_buy_price)
            VALUES (p_user, p_base, 0)
            ON CONFLICT (user_id, currency) DO NOTHING;
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
            RAISE EXCEPTION 'fills of order % exceed its reservation', p_order USING ERRCODE = '22023';
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
        SET locked = r.locked, last_fill_seq = r.last_fill_seq, released = r.released
        WHERE order_id = p_order;
    RETURN QUERY SELECT v_applied, v_released;
END;
$$;
