//! The simulated markets: a seeded random walk on tick-aligned prices, an
//! orderbook that agrees with the last trade, and the ticker, recent trades and
//! 1-minute candles derived from those trades.
//!
//! Prices move by whole ticks; trades execute at the best ask (taker BID) or best
//! bid (taker ASK) for at most the size shown there; every step emits a trade, the
//! updated ticker and the updated orderbook, as Upbit does. Only the random walk is
//! seeded: the same seed gives the same sequence of markets, prices, sides and
//! volumes, whatever the clock says.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use upbit::market::{is_on_tick, tick_size};
use upbit::write::{self, Format};
use upbit::{
    AskBid, Change, MarketState, MarketWarning, Orderbook, OrderbookUnit, StreamType, Ticker, Trade,
};

use crate::markets::MarketSpec;

/// Levels kept on each side of a book.
pub const DEPTH: usize = 30;
/// Recent trades kept per market for `/v1/trades/ticks`.
pub const RECENT_TRADES: usize = 500;
/// 1-minute candles kept per market (two days).
pub const CANDLE_MINUTES: usize = 2 * 1440;

const MS_PER_DAY: i64 = 86_400_000;

/// One message of the feed.
// Payloads are created once and shared behind an `Arc<Event>`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    Ticker(Ticker),
    Trade(Trade),
    Orderbook(Orderbook),
}

impl Payload {
    pub fn code(&self) -> &str {
        match self {
            Self::Ticker(t) => &t.code,
            Self::Trade(t) => &t.code,
            Self::Orderbook(o) => &o.code,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Ticker(_) => "ticker",
            Self::Trade(_) => "trade",
            Self::Orderbook(_) => "orderbook",
        }
    }
}

/// A feed message with its serialised frames cached, so many connections share
/// the serialisation work.
#[derive(Debug)]
pub struct Event {
    pub payload: Payload,
    default: OnceLock<bytes::Bytes>,
    simple: OnceLock<bytes::Bytes>,
    /// An orderbook's book: the text of its levels in the frames last written.
    levels: Option<Arc<Mutex<BookTexts>>>,
}

/// The text of one book's levels as last written, per format (see
/// [`write::LevelTexts`]): most levels of the next frame are copied from it.
#[derive(Debug, Default)]
pub struct BookTexts {
    default: write::LevelTexts,
    simple: write::LevelTexts,
}

impl Event {
    pub fn new(payload: Payload) -> Arc<Self> {
        Self::with_levels(payload, None)
    }

    /// An event whose orderbook frames reuse (and update) `levels`, kept for
    /// its book across its events.
    pub fn with_levels(payload: Payload, levels: Option<Arc<Mutex<BookTexts>>>) -> Arc<Self> {
        Arc::new(Self {
            payload,
            default: OnceLock::new(),
            simple: OnceLock::new(),
            levels,
        })
    }

    /// The frame for `format`; orderbooks cut to `depth` levels. Cached frames
    /// are shared, not copied, by every connection that sends them.
    pub fn frame(&self, format: Format, depth: usize) -> bytes::Bytes {
        let cache = match format {
            Format::Default => Some(&self.default),
            Format::Simple => Some(&self.simple),
            Format::JsonList | Format::SimpleList => None,
        };
        let full_depth = match &self.payload {
            Payload::Orderbook(o) => depth >= o.orderbook_units.len(),
            _ => true,
        };
        match cache {
            Some(cell) if full_depth => cell
                .get_or_init(|| match (&self.payload, &self.levels) {
                    (Payload::Orderbook(o), Some(levels)) => {
                        let mut texts = levels.lock().unwrap_or_else(|p| p.into_inner());
                        let texts = match format {
                            Format::Simple => &mut texts.simple,
                            _ => &mut texts.default,
                        };
                        write::orderbook_reusing(o, format, texts).into()
                    }
                    _ => render(&self.payload, format, depth).into(),
                })
                .clone(),
            _ => render(&self.payload, format, depth).into(),
        }
    }
}

/// Serialises a payload (as a snapshot when `stream_type` says so).
pub fn render(payload: &Payload, format: Format, depth: usize) -> String {
    match payload {
        Payload::Ticker(t) => write::ticker(t, format),
        Payload::Trade(t) => write::trade(t, format),
        Payload::Orderbook(o) if o.orderbook_units.len() > depth => {
            let mut cut = o.clone();
            cut.orderbook_units.truncate(depth);
            cut.total_ask_size = cut.orderbook_units.iter().map(|u| u.ask_size).sum();
            cut.total_bid_size = cut.orderbook_units.iter().map(|u| u.bid_size).sum();
            write::orderbook(&cut, format)
        }
        Payload::Orderbook(o) => write::orderbook(o, format),
    }
}

/// A 1-minute candle built from the simulator's own trades.
#[derive(Clone, Debug, PartialEq)]
pub struct SimCandle {
    pub start: i64,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
    pub value: Decimal,
    pub last_ts: i64,
}

/// Why an injected trade was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("unknown market {0}")]
    UnknownMarket(String),
    #[error("price {0} is not positive or not on the market's tick")]
    BadPrice(Decimal),
    #[error("volume {0} is not positive")]
    BadVolume(Decimal),
}

/// The price levels of a book: asks upward from the best ask, bids downward from
/// the best bid. Kept with the book and moved one level at a time as its best bid
/// moves, because walking the tick table for 60 levels on every step was most of
/// the simulator's work.
#[derive(Clone, Debug, PartialEq)]
struct Ladder {
    asks: [Decimal; DEPTH],
    bids: [Decimal; DEPTH],
}

impl Ladder {
    fn new(quote: &str, best_bid: Decimal) -> Self {
        let mut asks = [Decimal::ZERO; DEPTH];
        let mut bids = [Decimal::ZERO; DEPTH];
        let (mut ask, mut bid) = (up(quote, best_bid), best_bid);
        for i in 0..DEPTH {
            asks[i] = ask;
            bids[i] = bid;
            ask = up(quote, ask);
            bid = down(quote, bid);
        }
        Self { asks, bids }
    }

    fn best_bid(&self) -> Decimal {
        self.bids[0]
    }

    /// The ladder for `best_bid`: shifted by one level when it is the next level
    /// up or down (and the neighbouring levels agree, as they do away from the
    /// bottom of the tick table), rebuilt otherwise. Either way it equals
    /// `Ladder::new(quote, best_bid)`.
    fn move_to(&mut self, quote: &str, best_bid: Decimal) {
        if best_bid == self.bids[0] {
            return;
        }
        if best_bid == self.asks[0] && down(quote, best_bid) == self.bids[0] {
            let top = up(quote, self.asks[DEPTH - 1]);
            self.bids.rotate_right(1);
            self.bids[0] = best_bid;
            self.asks.rotate_left(1);
            self.asks[DEPTH - 1] = top;
        } else if best_bid == self.bids[1] && up(quote, best_bid) == self.bids[0] {
            let bottom = down(quote, self.bids[DEPTH - 1]);
            self.asks.rotate_right(1);
            self.asks[0] = self.bids[0];
            self.bids.rotate_left(1);
            self.bids[DEPTH - 1] = bottom;
        } else {
            *self = Self::new(quote, best_bid);
        }
    }
}

struct Book {
    spec: MarketSpec,
    /// The price levels; `ladder.best_bid()` is the best bid.
    ladder: Ladder,
    sizer: Sizer,
    ask_sizes: [Decimal; DEPTH],
    bid_sizes: [Decimal; DEPTH],
    prev_close: Decimal,
    open: Decimal,
    high: Decimal,
    low: Decimal,
    last_price: Decimal,
    acc_volume: Decimal,
    acc_price: Decimal,
    acc_ask_volume: Decimal,
    acc_bid_volume: Decimal,
    day: i64,
    last_sid: i64,
    last_trade_ts: i64,
    high_52w: Decimal,
    low_52w: Decimal,
    ticker: Option<Ticker>,
    orderbook: Option<Orderbook>,
    /// Under Upbit's investment warning (`POST /sim/market-event`): its
    /// tickers say `market_warning: CAUTION`.
    warning: bool,
    trades: VecDeque<Trade>,
    candles: VecDeque<SimCandle>,
}

impl Book {
    fn set_best_bid(&mut self, best_bid: Decimal) {
        self.ladder.move_to(self.spec.code.quote(), best_bid);
    }
}

/// The simulated exchange state.
pub struct Engine {
    rng: StdRng,
    books: Vec<Book>,
    index: HashMap<String, usize>,
}

fn quote_of(spec: &MarketSpec) -> &str {
    spec.code.quote()
}

/// The sum of `sizes`, exact. Added as integers when they share a scale (sizes are
/// drawn in units of 1e-8), which is a tenth of the cost of adding decimals and
/// was a tenth of the simulator's work; as decimals otherwise.
fn total<'a>(sizes: impl IntoIterator<Item = &'a Decimal> + Clone) -> Decimal {
    let mut scale = None;
    let mut sum: i128 = 0;
    for d in sizes.clone() {
        if d.is_zero() {
            continue;
        }
        if *scale.get_or_insert(d.scale()) != d.scale() {
            return sizes.into_iter().sum();
        }
        sum += d.mantissa();
    }
    Decimal::try_from_i128_with_scale(sum, scale.unwrap_or(0))
        .unwrap_or_else(|_| sizes.into_iter().sum())
}

/// The next price level above `p`.
fn up(quote: &str, p: Decimal) -> Decimal {
    p + tick_size(quote, p)
}

/// The next price level below `p` (zero when there is none).
fn down(quote: &str, p: Decimal) -> Decimal {
    let mut next = p - tick_size(quote, p);
    if next > Decimal::ZERO && tick_size(quote, next) < tick_size(quote, p) {
        next = p - tick_size(quote, next);
    }
    next.max(Decimal::ZERO)
}

/// The range of sizes, in units of 1e-8, worth a plausible amount of quote
/// currency at `price` (KRW 10,000 – 30,000,000; BTC 0.0002 – 0.5; USDT and
/// others 10 – 20,000).
fn size_range(quote: &str, price: Decimal) -> (i64, i64) {
    let (low, high) = match quote {
        "KRW" => (Decimal::new(10_000, 0), Decimal::new(30_000_000, 0)),
        "BTC" => (Decimal::new(20_000, 8), Decimal::new(50_000_000, 8)),
        _ => (Decimal::new(1_000, 2), Decimal::new(2_000_000, 2)),
    };
    let sats = |notional: Decimal| {
        (notional / price * Decimal::new(100_000_000, 0))
            .floor()
            .mantissa()
            .clamp(1, i64::MAX as i128) as i64
    };
    let (low, high) = (sats(low), sats(high));
    (low, high.max(low))
}

/// Sizes drawn for one book, with the range of its last price kept: a size is
/// drawn several times a step, and dividing by the price each time was a good
/// part of the simulator's work.
#[derive(Clone, Copy)]
struct Sizer {
    price: Decimal,
    range: (i64, i64),
}

impl Sizer {
    fn new(quote: &str, price: Decimal) -> Self {
        Self {
            price,
            range: size_range(quote, price),
        }
    }

    /// A random size worth a plausible amount at `price` (at least 1e-8).
    fn draw(&mut self, rng: &mut StdRng, quote: &str, price: Decimal) -> Decimal {
        if price != self.price {
            *self = Self::new(quote, price);
        }
        Decimal::new(rng.random_range(self.range.0..=self.range.1), 8)
    }
}

impl Engine {
    pub fn new(markets: Vec<MarketSpec>, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut books = Vec::with_capacity(markets.len());
        let mut index = HashMap::new();
        for spec in markets {
            let quote = quote_of(&spec).to_owned();
            let price = upbit::market::floor_to_tick(&quote, spec.price);
            let mut sizer = Sizer::new(&quote, price);
            let mut ask_sizes = [Decimal::ZERO; DEPTH];
            let mut bid_sizes = [Decimal::ZERO; DEPTH];
            for i in 0..DEPTH {
                ask_sizes[i] = sizer.draw(&mut rng, &quote, price);
                bid_sizes[i] = sizer.draw(&mut rng, &quote, price);
            }
            index.insert(spec.code.to_string(), books.len());
            books.push(Book {
                ladder: Ladder::new(&quote, down(&quote, price)),
                sizer,
                ask_sizes,
                bid_sizes,
                prev_close: price,
                open: price,
                high: price,
                low: price,
                last_price: price,
                acc_volume: Decimal::ZERO,
                acc_price: Decimal::ZERO,
                acc_ask_volume: Decimal::ZERO,
                acc_bid_volume: Decimal::ZERO,
                day: i64::MIN,
                last_sid: 0,
                last_trade_ts: 0,
                high_52w: price * Decimal::new(15, 1),
                low_52w: upbit::market::floor_to_tick(&quote, price * Decimal::new(6, 1)),
                ticker: None,
                orderbook: None,
                warning: false,
                trades: VecDeque::with_capacity(RECENT_TRADES),
                candles: VecDeque::new(),
                spec,
            });
        }
        Self { rng, books, index }
    }

    pub fn markets(&self) -> impl Iterator<Item = &MarketSpec> {
        self.books.iter().map(|b| &b.spec)
    }

    pub fn has_market(&self, code: &str) -> bool {
        self.index.contains_key(code)
    }

    /// One random step: pick a market, maybe move its price, trade at the top of
    /// the book. Returns the trade, ticker and orderbook messages.
    pub fn step(&mut self, now_ms: i64) -> [Payload; 3] {
        let Self { rng, books, .. } = self;
        let i = rng.random_range(0..books.len());
        let side = if rng.random_bool(0.5) {
            AskBid::Bid
        } else {
            AskBid::Ask
        };
        let book = &mut books[i];
        // Random walk with a pull back towards the starting price.
        if rng.random_bool(0.3) {
            let start = book.spec.price;
            let best_bid = book.ladder.best_bid();
            let ratio_up = best_bid > start * Decimal::new(12, 1);
            let ratio_down = best_bid < start * Decimal::new(8, 1);
            let go_up = if ratio_up {
                rng.random_bool(0.3)
            } else if ratio_down {
                rng.random_bool(0.7)
            } else {
                rng.random_bool(0.5)
            };
            let next = if go_up {
                book.ladder.asks[0]
            } else {
                book.ladder.bids[1]
            };
            if next > Decimal::ZERO {
                book.set_best_bid(next);
            }
        }
        let (price, level_size) = match side {
            AskBid::Bid => (book.ladder.asks[0], book.ask_sizes[0]),
            AskBid::Ask => (book.ladder.best_bid(), book.bid_sizes[0]),
        };
        let fraction = Decimal::new(rng.random_range(1..=100), 2);
        let volume = (level_size * fraction).round_dp(8).max(Decimal::new(1, 8));
        // Refresh a few level sizes so the book breathes.
        let quote = book.spec.code.quote();
        for _ in 0..3 {
            let level = rng.random_range(1..DEPTH);
            book.ask_sizes[level] = book.sizer.draw(rng, quote, price);
            let level = rng.random_range(1..DEPTH);
            book.bid_sizes[level] = book.sizer.draw(rng, quote, price);
        }
        let refill = book.sizer.draw(rng, quote, price);
        self.trade(i, price, volume, side, now_ms, refill)
    }

    /// Trades `volume` at `price` with taker `side` in `market` (tests, benchmarks).
    pub fn inject(
        &mut self,
        market: &str,
        price: Decimal,
        volume: Decimal,
        side: AskBid,
        now_ms: i64,
    ) -> Result<[Payload; 3], InjectError> {
        let i = *self
            .index
            .get(market)
            .ok_or_else(|| InjectError::UnknownMarket(market.to_owned()))?;
        let quote = quote_of(&self.books[i].spec);
        if price <= Decimal::ZERO || !is_on_tick(quote, price) {
            return Err(InjectError::BadPrice(price));
        }
        if volume <= Decimal::ZERO {
            return Err(InjectError::BadVolume(volume));
        }
        let book = &mut self.books[i];
        let refill = book.sizer.draw(&mut self.rng, quote_of(&book.spec), price);
        // Put the book where this trade could happen, with enough size there.
        match side {
            AskBid::Bid => {
                book.set_best_bid(down(quote_of(&book.spec), price));
                book.ask_sizes[0] = book.ask_sizes[0].max(volume);
            }
            AskBid::Ask => {
                book.set_best_bid(price);
                book.bid_sizes[0] = book.bid_sizes[0].max(volume);
            }
        }
        Ok(self.trade(i, price, volume, side, now_ms, refill))
    }

    fn trade(
        &mut self,
        i: usize,
        price: Decimal,
        volume: Decimal,
        side: AskBid,
        now_ms: i64,
        refill: Decimal,
    ) -> [Payload; 3] {
        let book = &mut self.books[i];
        let code = book.spec.code.to_string();
        let ts = now_ms.max(book.last_trade_ts);
        let day = ts.div_euclid(MS_PER_DAY);
        if day != book.day {
            if book.day != i64::MIN {
                book.prev_close = book.last_price;
            }
            book.day = day;
            book.open = price;
            book.high = price;
            book.low = price;
            book.acc_volume = Decimal::ZERO;
            book.acc_price = Decimal::ZERO;
            book.acc_ask_volume = Decimal::ZERO;
            book.acc_bid_volume = Decimal::ZERO;
        }
        book.last_price = price;
        book.last_trade_ts = ts;
        book.high = book.high.max(price);
        book.low = book.low.min(price);
        book.high_52w = book.high_52w.max(price);
        book.low_52w = book.low_52w.min(price);
        let funds = price * volume;
        book.acc_volume += volume;
        book.acc_price += funds;
        match side {
            AskBid::Ask => book.acc_ask_volume += volume,
            AskBid::Bid => book.acc_bid_volume += volume,
        }
        // Consume the top level; when it is gone the book moves one level.
        let level = match side {
            AskBid::Bid => &mut book.ask_sizes,
            AskBid::Ask => &mut book.bid_sizes,
        };
        if level[0] > volume {
            level[0] -= volume;
        } else {
            level.rotate_left(1);
            level[DEPTH - 1] = refill;
            let best_bid = book.ladder.best_bid();
            let next = match side {
                AskBid::Bid => book.ladder.asks[0],
                AskBid::Ask => book.ladder.bids[1].max(tick_size(quote_of(&book.spec), best_bid)),
            };
            book.set_best_bid(next);
        }
        let sid = (ts * 1000).max(book.last_sid + 1);
        book.last_sid = sid;
        let change = Change::between(book.prev_close, price);
        let signed_change_price = price - book.prev_close;
        let signed_change_rate = if book.prev_close.is_zero() {
            Decimal::ZERO
        } else {
            (signed_change_price / book.prev_close).round_dp(10)
        };
        let orderbook = Self::orderbook_of(book, ts);
        let best = &orderbook.orderbook_units[0];
        let trade = Trade {
            code: code.clone(),
            trade_price: price,
            trade_volume: volume,
            ask_bid: side,
            prev_closing_price: book.prev_close,
            change,
            change_price: signed_change_price.abs(),
            trade_timestamp: ts,
            timestamp: ts,
            sequential_id: sid,
            best_ask_price: Some(best.ask_price),
            best_ask_size: Some(best.ask_size),
            best_bid_price: Some(best.bid_price),
            best_bid_size: Some(best.bid_size),
            stream_type: StreamType::Realtime,
        };
        let ticker = Ticker {
            code,
            opening_price: book.open,
            high_price: book.high,
            low_price: book.low,
            trade_price: price,
            prev_closing_price: book.prev_close,
            change,
            change_price: signed_change_price.abs(),
            signed_change_price,
            change_rate: signed_change_rate.abs(),
            signed_change_rate,
            trade_volume: volume,
            acc_trade_volume: book.acc_volume,
            acc_trade_volume_24h: book.acc_volume,
            acc_trade_price: book.acc_price.round_dp(8),
            acc_trade_price_24h: book.acc_price.round_dp(8),
            trade_timestamp: ts,
            ask_bid: Some(side),
            acc_ask_volume: book.acc_ask_volume,
            acc_bid_volume: book.acc_bid_volume,
            highest_52_week_price: Some(book.high_52w),
            highest_52_week_date: Some("2025-03-28".into()),
            lowest_52_week_price: Some(book.low_52w),
            lowest_52_week_date: Some("2025-08-05".into()),
            market_state: MarketState::Active,
            delisting_date: None,
            market_warning: MarketWarning::of(book.warning),
            timestamp: ts,
            stream_type: StreamType::Realtime,
        };
        if book.trades.len() == RECENT_TRADES {
            book.trades.pop_front();
        }
        book.trades.push_back(trade.clone());
        Self::add_to_candle(book, ts, price, volume, funds);
        book.ticker = Some(ticker.clone());
        book.orderbook = Some(orderbook.clone());
        [
            Payload::Trade(trade),
            Payload::Ticker(ticker),
            Payload::Orderbook(orderbook),
        ]
    }

    fn orderbook_of(book: &Book, ts: i64) -> Orderbook {
        let units: Vec<OrderbookUnit> = (0..DEPTH)
            .map(|i| {
                let bid = book.ladder.bids[i];
                OrderbookUnit {
                    ask_price: book.ladder.asks[i],
                    bid_price: bid,
                    ask_size: book.ask_sizes[i],
                    bid_size: if bid > Decimal::ZERO {
                        book.bid_sizes[i]
                    } else {
                        Decimal::ZERO
                    },
                }
            })
            .collect();
        Orderbook {
            code: book.spec.code.to_string(),
            total_ask_size: total(&book.ask_sizes),
            total_bid_size: total(units.iter().map(|u| &u.bid_size)),
            orderbook_units: units,
            timestamp: ts,
            level: Decimal::ZERO,
            stream_type: StreamType::Realtime,
        }
    }

    fn add_to_candle(book: &mut Book, ts: i64, price: Decimal, volume: Decimal, funds: Decimal) {
        let start = ts - ts.rem_euclid(60_000);
        match book.candles.back_mut() {
            Some(c) if c.start == start => {
                c.high = c.high.max(price);
                c.low = c.low.min(price);
                c.close = price;
                c.volume += volume;
                c.value += funds;
                c.last_ts = ts;
            }
            _ => {
                if book.candles.len() == CANDLE_MINUTES {
                    book.candles.pop_front();
                }
                book.candles.push_back(SimCandle {
                    start,
                    open: price,
                    high: price,
                    low: price,
                    close: price,
                    volume,
                    value: funds,
                    last_ts: ts,
                });
            }
        }
    }

    /// Puts a market under Upbit's investment warning, or lifts it: its next
    /// ticker, and the one it shows now, say so. False when the market is unknown.
    pub fn set_warning(&mut self, code: &str, warning: bool) -> bool {
        let Some(book) = self.index.get(code).map(|i| &mut self.books[*i]) else {
            return false;
        };
        book.warning = warning;
        if let Some(ticker) = &mut book.ticker {
            ticker.market_warning = MarketWarning::of(warning);
        }
        true
    }

    /// Current ticker of a market (None before its first trade or when unknown).
    pub fn ticker(&self, code: &str) -> Option<&Ticker> {
        self.index
            .get(code)
            .and_then(|i| self.books[*i].ticker.as_ref())
    }

    pub fn orderbook(&self, code: &str) -> Option<&Orderbook> {
        self.index
            .get(code)
            .and_then(|i| self.books[*i].orderbook.as_ref())
    }

    /// Recent trades, newest first.
    pub fn trades(&self, code: &str) -> Vec<Trade> {
        self.index
            .get(code)
            .map(|i| self.books[*i].trades.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// 1-minute candles, oldest first.
    pub fn candles(&self, code: &str) -> Vec<SimCandle> {
        self.index
            .get(code)
            .map(|i| self.books[*i].candles.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Makes every market trade once so tickers and orderbooks exist.
    pub fn warm_up(&mut self, now_ms: i64) -> Vec<Payload> {
        let codes: Vec<String> = self.books.iter().map(|b| b.spec.code.to_string()).collect();
        let mut out = Vec::new();
        for code in codes {
            let i = self.index[&code];
            let price = self.books[i].ladder.asks[0];
            let book = &mut self.books[i];
            let quote = quote_of(&book.spec);
            let volume = book.sizer.draw(&mut self.rng, quote, price) / Decimal::from(10);
            let volume = volume.round_dp(8).max(Decimal::new(1, 8));
            if let Ok(events) = self.inject(&code, price, volume, AskBid::Bid, now_ms) {
                out.extend(events);
            }
        }
        out
    }

    /// Applies a recorded message (replay): trades and tickers update the state the
    /// REST endpoints and snapshots serve; orderbooks replace the book.
    pub fn apply_recorded(&mut self, payload: &Payload) {
        let Some(&i) = self.index.get(payload.code()) else {
            return;
        };
        let book = &mut self.books[i];
        match payload {
            Payload::Trade(t) => {
                book.last_price = t.trade_price;
                book.last_trade_ts = t.trade_timestamp;
                book.last_sid = book.last_sid.max(t.sequential_id);
                if book.trades.len() == RECENT_TRADES {
                    book.trades.pop_front();
                }
                book.trades.push_back(t.clone());
                Self::add_to_candle(
                    book,
                    t.trade_timestamp,
                    t.trade_price,
                    t.trade_volume,
                    t.trade_price * t.trade_volume,
                );
            }
            Payload::Ticker(t) => book.ticker = Some(t.clone()),
            Payload::Orderbook(o) => {
                if let Some(best) = o.orderbook_units.first() {
                    book.set_best_bid(best.bid_price);
                }
                book.orderbook = Some(o.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn engine(seed: u64) -> Engine {
        Engine::new(crate::markets::defaults(), seed)
    }

    #[test]
    fn the_same_seed_gives_the_same_market_path() {
        let (mut a, mut b) = (engine(7), engine(7));
        for n in 0..2000 {
            // Different clocks, same path.
            let (pa, pb) = (a.step(1_000_000 + n), b.step(9_000_000 + n * 3));
            let (Payload::Trade(ta), Payload::Trade(tb)) = (&pa[0], &pb[0]) else {
                panic!()
            };
            assert_eq!(
                (&ta.code, ta.trade_price, ta.trade_volume, ta.ask_bid),
                (&tb.code, tb.trade_price, tb.trade_volume, tb.ask_bid)
            );
        }
        let mut c = engine(8);
        let differs = (0..50).any(|n| a.step(n) != c.step(n));
        assert!(differs, "another seed gives another path");
    }

    #[test]
    fn prices_stay_on_tick_and_books_agree_with_trades() {
        let mut e = engine(42);
        let mut sids: HashMap<String, i64> = HashMap::new();
        for n in 0..20_000 {
            let [trade, ticker, book] = e.step(1_700_000_000_000 + n);
            let (Payload::Trade(t), Payload::Ticker(tk), Payload::Orderbook(ob)) =
                (trade, ticker, book)
            else {
                panic!("trade, ticker, orderbook in that order");
            };
            let quote = t.code.split('-').next().unwrap().to_owned();
            assert!(
                is_on_tick(&quote, t.trade_price),
                "{} off tick",
                t.trade_price
            );
            assert!(t.trade_volume > Decimal::ZERO);
            assert_eq!(tk.trade_price, t.trade_price);
            assert_eq!(ob.orderbook_units.len(), DEPTH);
            let best = &ob.orderbook_units[0];
            assert!(best.ask_price > best.bid_price, "crossed book {best:?}");
            // The book after a trade still contains the traded level or moved past it.
            match t.ask_bid {
                AskBid::Bid => assert!(best.ask_price >= t.trade_price),
                AskBid::Ask => assert!(best.bid_price <= t.trade_price),
            }
            for u in &ob.orderbook_units {
                assert!(
                    is_on_tick(&quote, u.ask_price)
                        && (u.bid_price.is_zero() || is_on_tick(&quote, u.bid_price))
                );
            }
            let last = sids.insert(t.code.clone(), t.sequential_id);
            assert!(
                last.is_none_or(|l| l < t.sequential_id),
                "sequential ids unique per market"
            );
            let units = &ob.orderbook_units;
            assert_eq!(ob.total_ask_size, units.iter().map(|u| u.ask_size).sum());
            assert_eq!(ob.total_bid_size, units.iter().map(|u| u.bid_size).sum());
        }
    }

    #[test]
    fn totals_are_exact_whatever_the_scales() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        let sum = |v: &[&str]| total(&v.iter().map(|s| d(s)).collect::<Vec<_>>());
        assert_eq!(
            sum(&["0.12345678", "1.00000000", "0", "-0.00000001"]),
            d("1.12345677")
        );
        assert_eq!(sum(&["0.5", "0.25", "3"]), d("3.75"), "mixed scales");
        assert_eq!(sum(&[]), Decimal::ZERO);
        // Large mantissas, with mixed scales and without.
        let big = "39614081257132168796771975168"; // 2^95
        assert_eq!(sum(&[big, "0.1"]), d(big) + d("0.1"));
        assert_eq!(sum(&[big, "-1"]), d(big) - Decimal::ONE);
    }

    #[test]
    fn sizes_are_worth_a_plausible_amount_at_the_price() {
        let p = |s| Decimal::from_str(s).unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        for (quote, price, low, high) in [
            ("KRW", "148000000", "10000", "30000000"),
            ("KRW", "0.02", "10000", "30000000"),
            ("BTC", "0.035", "0.0002", "0.5"),
            ("USDT", "105000", "10", "20000"),
        ] {
            let mut sizer = Sizer::new(quote, p(price));
            for _ in 0..1000 {
                let size = sizer.draw(&mut rng, quote, p(price));
                let worth = size * p(price);
                assert!(size.scale() <= 8 && size > Decimal::ZERO, "{size}");
                // Within the notional range, give or take one unit of 1e-8.
                let slack = Decimal::new(1, 8) * p(price);
                assert!(
                    worth + slack >= p(low) && worth <= p(high) + slack,
                    "{quote} {price}: {size} is worth {worth}"
                );
            }
        }
        // A price too small for the range still gives sizes, not a panic.
        let mut sizer = Sizer::new("KRW", p("0.00000001"));
        assert!(sizer.draw(&mut rng, "KRW", p("0.00000001")) > Decimal::ZERO);
    }

    #[test]
    fn the_kept_ladder_equals_one_built_afresh() {
        // Markets that start on tick-table boundaries, where a level up and a
        // level down are not inverses.
        let markets = crate::markets::parse(
            "KRW-BTC,KRW-SHIB,KRW-A:1000000,KRW-B:100,KRW-C:10,KRW-D:1,KRW-E:0.1,USDT-F:10,USDT-G:1,BTC-H:0.00000100",
        )
        .unwrap();
        let mut e = Engine::new(markets, 3);
        for n in 0..50_000 {
            let [_, _, Payload::Orderbook(ob)] = e.step(1_700_000_000_000 + n) else {
                panic!("the third payload is the orderbook");
            };
            let book = &e.books[e.index[&ob.code]];
            let quote = book.spec.code.quote();
            assert_eq!(
                book.ladder,
                Ladder::new(quote, book.ladder.best_bid()),
                "{} after step {n}",
                ob.code
            );
            assert_eq!(ob.orderbook_units[0].bid_price, book.ladder.best_bid());
        }
        // A jump (an injected trade far away) rebuilds it.
        let p = |s| Decimal::from_str(s).unwrap();
        e.inject("KRW-A", p("2000000"), p("0.00000001"), AskBid::Ask, 0)
            .unwrap();
        let book = &e.books[e.index["KRW-A"]];
        assert_eq!(book.ladder, Ladder::new("KRW", p("2000000")));
    }

    #[test]
    fn injected_trades_set_the_price_and_candles_sum_them() {
        let mut e = engine(1);
        let minute = 1_700_000_040_000; // a whole minute
        let p = |s| Decimal::from_str(s).unwrap();
        e.inject("KRW-BTC", p("148001000"), p("0.5"), AskBid::Bid, minute + 1)
            .unwrap();
        e.inject(
            "KRW-BTC",
            p("148005000"),
            p("0.25"),
            AskBid::Bid,
            minute + 2,
        )
        .unwrap();
        e.inject("KRW-BTC", p("147990000"), p("1"), AskBid::Ask, minute + 3)
            .unwrap();
        assert_eq!(e.ticker("KRW-BTC").unwrap().trade_price, p("147990000"));
        let c = e.candles("KRW-BTC").pop().unwrap();
        assert_eq!(
            (c.open, c.high, c.low, c.close),
            (
                p("148001000"),
                p("148005000"),
                p("147990000"),
                p("147990000")
            )
        );
        assert_eq!(c.volume, p("1.75"));
        assert_eq!(e.trades("KRW-BTC")[0].trade_price, p("147990000"));
        assert_eq!(
            e.inject("KRW-BTC", p("148001500"), p("1"), AskBid::Bid, minute),
            Err(InjectError::BadPrice(p("148001500")))
        );
        assert!(matches!(
            e.inject("KRW-NOPE", p("1"), p("1"), AskBid::Bid, 0),
            Err(InjectError::UnknownMarket(_))
        ));
    }
    #[test]
    fn a_warned_markets_tickers_say_caution_until_it_is_lifted() {
        let mut e = engine(1);
        let p = |s| Decimal::from_str(s).unwrap();
        let at = 1_700_000_040_000;
        let warning = |e: &Engine| e.ticker("KRW-BTC").map(|t| t.market_warning);
        e.inject("KRW-BTC", p("148001000"), p("0.5"), AskBid::Bid, at)
            .unwrap();
        assert_eq!(warning(&e), Some(MarketWarning::None));
        assert!(e.set_warning("KRW-BTC", true));
        assert_eq!(warning(&e), Some(MarketWarning::Caution), "the kept ticker");
        let [_, ticker, _] = e
            .inject("KRW-BTC", p("148002000"), p("0.5"), AskBid::Bid, at + 1)
            .unwrap();
        let Payload::Ticker(t) = ticker else {
            panic!("a ticker second: {ticker:?}")
        };
        assert_eq!(t.market_warning, MarketWarning::Caution, "the next one");
        assert!(
            write::ticker(&t, Format::Simple).contains(r#""mw":"CAUTION""#),
            "as Upbit writes it"
        );
        assert!(e.set_warning("KRW-BTC", false));
        assert_eq!(warning(&e), Some(MarketWarning::None));
        assert!(!e.set_warning("KRW-NOPE", true), "an unknown market");
        assert_eq!(warning(&e), Some(MarketWarning::None), "others unchanged");
    }
}
