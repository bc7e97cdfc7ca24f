-- Inventory trusts nobody (replaces reserve/settle/deposit of 0002):
--
-- * A reservation records the terms of its order (side, kind, limit price,
--   volume, budget, fee rate) and what its fills added up to, and settle checks
--   every fill against them: funds = price × volume, fee = funds × rate rounded
--   down to 8 places, the price within the limit, the volume and the funds
--   within the order's. A fill that is not is refused (SQLSTATE EX001) and the
--   whole call changes nothing. Reservations made before this migration have no
--   terms and are settled as before.
-- * The amount locked is computed by inventory from the terms (the caller passes
--   the terms, not an amount), and the reservation is refused (EX002) once the
--   caller's `not_after` has passed, so a caller that lost the answer of a call
--   knows the outcome for certain after that time.
-- * The paper faucet caps what a user deposited in the last 24 hours, summed
--   from the ledger (not the balance held, which trading moves).
--
-- Errors raised for callers to map (besides those of 0002):
--   EX001 a fill the order's terms do not allow
--   EX002 the reservation's time (not_after) has passed
--   EX003 the deposit would pass the cap of the last 24 hours

ALTER TABLE reservations
    ADD COLUMN side             TEXT CHECK (side IN ('bid', 'ask')),
    ADD COLUMN kind             TEXT CHECK (kind IN ('limit', 'price', 'market')),
    ADD COLUMN limit_price      NUMERIC,
    ADD COLUMN max_volume       NUMERIC,
    ADD COLUMN budget           NUMERIC,
    ADD COLUMN fee_rate         NUMERIC,
    ADD COLUMN executed_volume  NUMERIC NOT NULL DEFAULT 0,
    ADD COLUMN executed_funds   NUMERIC NOT NULL DEFAULT 0;

CREATE INDEX ledger_deposits ON ledger (user_id, currency, created_at) WHERE kind = 'deposit';

DROP FUNCTION settle(uuid, uuid, text, text, text, jsonb, boolean, numeric);
DROP FUNCTION reserve(uuid, uuid, text, numeric);
DROP FUNCTION deposit(uuid, text, numeric, text, numeric);

-- Paper faucet: credits a deposit once per key, keeping what the user deposited
-- of the currency in the last 24 hours at or under p_cap.
CREATE FUNCTION deposit(p_user uuid, p_currency text, p_amount numeric, p_key text, p_cap numeric)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_recent numeric;
BEGIN
    IF p_amount <= 0 THEN
        RAISE EXCEPTION 'amount must be positive' USING ERRCODE = '22023';
    END IF;
    -- The account row serialises a user's deposits, so two at once cannot both
    -- pass the cap.
    PERFORM 1 FROM accounts WHERE user_id = p_user FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no account' USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO operations (key) VALUES ('deposit:' || p_user || ':' || p_key) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    SELECT coalesce(sum(available_delta), 0) INTO v_recent FROM ledger
        WHERE user_id = p_user AND currency = p_currency AND kind = 'deposit'
          AND created_at > now() - interval '24 hours';
    IF v_recent + p_amount > p_cap THEN
        RAISE EXCEPTION 'deposits of % in 24 hours are capped at % (% deposited)', p_currency, p_cap, v_recent
            USING ERRCODE = 'EX003';
    END IF;
    PERFORM move_balance(p_user, p_currency, p_amount, 0, 'deposit', NULL, p_key);
    RETURN true;
END;
$$;

-- Refuses a fill (and with it the whole call).
CREATE FUNCTION refuse_fill(p_order uuid, p_seq integer, p_why text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'fill % of order % refused: %', p_seq, p_order, p_why USING ERRCODE = 'EX001';
END;
$$;

-- Reserves for an order on its first call (p_terms given and no reservation yet),
-- applies its fills in sequence (each once: fills up to the reservation's
-- last_fill_seq are skipped), each checked against the order's terms, then on
-- p_finalize releases what is still locked.
-- p_fills: [{"seq":1,"price":"…","volume":"…","funds":"…","fee":"…"}, …]
-- p_terms: {"kind":"limit|price|market","price":…,"volume":…,"budget":…,"fee_rate":"…",
--           "lock":"…" (computed by the service from the terms),"not_after":"<timestamptz>"}
CREATE FUNCTION settle(
    p_order uuid, p_user uuid, p_side text, p_base text, p_quote text,
    p_fills jsonb, p_finalize boolean, p_terms jsonb
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
