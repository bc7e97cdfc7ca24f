-- Upbit's reasons for caution on a market (market_event.caution of
-- /v1/market/all?is_details=true), next to its investment warning. The
-- ingestor sends them with the market list and again whenever they change.
ALTER TABLE markets
    ADD COLUMN caution_price_fluctuations              BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN caution_trading_volume_soaring          BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN caution_deposit_amount_soaring          BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN caution_global_price_differences        BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN caution_concentration_of_small_accounts BOOLEAN NOT NULL DEFAULT false;
