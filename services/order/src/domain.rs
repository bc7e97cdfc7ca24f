//! Order rules, free of I/O: validation as Upbit does it, what an order must
//! reserve, and how it executes against orderbook levels.

use exchange_proto::decimal;
use rust_decimal::{Decimal, RoundingStrategy};
use upbit::market::{MarketCode, is_on_tick, min_order_total};

use crate::error::OrderError;

/// Volumes have at most this many decimal places (as Upbit).
pub const VOLUME_SCALE: u32 = 8;
/// Largest total of one order in the quote currency (KRW).
pub fn max_total() -> Decimal {
    Decimal::from(1_000_000_000)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Bid,
    Ask,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Bid => "bid",
            Side::Ask => "ask",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "bid" => Some(Side::Bid),
            "ask" => Some(Side::Ask),
            _ => None,
        }
    }
}

/// Upbit's `ord_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrdType {
    /// Price and volume.
    Limit,
    /// Market buy for a total (the `price` field holds it).
    Price,
    /// Market sell of a volume.
    Market,
    /// At the best price on the other side only (Upbit's 최유리 지정가): a bid
    /// spends a total (`price`), an ask sells a volume; IOC or FOK.
    Best,
}

impl OrdType {
    pub fn as_str(self) -> &'static str {
        match self {
            OrdType::Limit => "limit",
            OrdType::Price => "price",
            OrdType::Market => "market",
            OrdType::Best => "best",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "limit" => Some(OrdType::Limit),
            "price" => Some(OrdType::Price),
            "market" => Some(OrdType::Market),
            "best" => Some(OrdType::Best),
            _ => None,
        }
    }
}

/// Upbit's `time_in_force`; none means the order rests until filled or
/// cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeInForce {
    /// Immediate or cancel: fills what crosses now, the rest is cancelled.
    Ioc,
    /// Fill or kill: fills all of it now, or nothing.
    Fok,
    /// Maker only: cancelled, with no fill, if it would take.
    PostOnly,
}

impl TimeInForce {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ioc => "ioc",
            Self::Fok => "fok",
            Self::PostOnly => "post_only",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ioc" => Some(Self::Ioc),
            "fok" => Some(Self::Fok),
            "post_only" => Some(Self::PostOnly),
            _ => None,
        }
    }
}

/// Upbit's `smp_type` (self-match prevention). Accepted and reported; paper
/// orders fill against the market's trades, never against each other, so a
/// self-match cannot happen here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmpType {
    CancelMaker,
    CancelTaker,
    Reduce,
    None,
}

impl SmpType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CancelMaker => "cancel_maker",
            Self::CancelTaker => "cancel_taker",
            Self::Reduce => "reduce",
            Self::None => "none",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cancel_maker" => Some(Self::CancelMaker),
            "cancel_taker" => Some(Self::CancelTaker),
            "reduce" => Some(Self::Reduce),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Pending,
    Wait,
    Done,
    Cancel,
    Rejected,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Wait => "wait",
            State::Done => "done",
            State::Cancel => "cancel",
            State::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(State::Pending),
            "wait" => Some(State::Wait),
            "done" => Some(State::Done),
            "cancel" => Some(State::Cancel),
            "rejected" => Some(State::Rejected),
            _ => None,
        }
    }
}

/// Reads a stored name (`store::OrderRow` via `#[sqlx(try_from = "String")]`);
/// a name this service never writes is a decode error, not a default.
macro_rules! from_stored_name {
    ($($t:ident),*) => {$(
        impl TryFrom<String> for $t {
            type Error = String;

            fn try_from(text: String) -> Result<Self, String> {
                Self::parse(&text)
                    .ok_or_else(|| format!("`{text}` is not a stored {}", stringify!($t)))
            }
        }
    )*};
}
from_stored_name!(Side, OrdType, State);

/// What an order trades, in the only shapes its type and side allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amounts {
    /// A limit order: this volume, at this price or better.
    Limit { price: Decimal, volume: Decimal },
    /// A market buy (`price`) or best bid: spend this total.
    Total(Decimal),
    /// A market sell (`market`) or best ask: sell this volume.
    Volume(Decimal),
}

impl Amounts {
    /// The order's `price` as Upbit shows and stores it: the limit price, or
    /// the total of a market buy.
    pub fn price(self) -> Option<Decimal> {
        match self {
            Self::Limit { price, .. } => Some(price),
            Self::Total(total) => Some(total),
            Self::Volume(_) => None,
        }
    }

    /// The order's `volume` (none for a market buy).
    pub fn volume(self) -> Option<Decimal> {
        match self {
            Self::Limit { volume, .. } | Self::Volume(volume) => Some(volume),
            Self::Total(_) => None,
        }
    }

    /// The limit price of a limit order.
    pub fn limit_price(self) -> Option<Decimal> {
        match self {
            Self::Limit { price, .. } => Some(price),
            Self::Total(_) | Self::Volume(_) => None,
        }
    }

    /// The most quote a bid spends: price × volume of a limit, the total of a
    /// market buy (none for a sell by volume).
    pub fn most_spent(self) -> Option<Decimal> {
        match self {
            Self::Limit { price, volume } => price.checked_mul(volume),
            Self::Total(total) => Some(total),
            Self::Volume(_) => None,
        }
    }

    /// The amounts of a stored order, read back from its [`Self::price`] and
    /// [`Self::volume`]; none when they do not fit its type and side.
    pub fn stored(
        ord_type: OrdType,
        side: Side,
        price: Option<Decimal>,
        volume: Option<Decimal>,
    ) -> Option<Self> {
        use OrdType::{Best, Limit, Market, Price};
        match (ord_type, side, price, volume) {
            (Limit, _, Some(price), Some(volume)) => Some(Self::Limit { price, volume }),
            (Price | Best, Side::Bid, Some(total), None) => Some(Self::Total(total)),
            (Market | Best, Side::Ask, None, Some(volume)) => Some(Self::Volume(volume)),
            _ => None,
        }
    }
}

/// A validated order, ready to be persisted.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated {
    pub market: MarketCode,
    pub side: Side,
    pub ord_type: OrdType,
    pub amounts: Amounts,
    /// What inventory must lock: the quote currency for bids, the base for asks.
    pub reserve_currency: String,
    pub reserve_amount: Decimal,
    pub fee_rate: Decimal,
    pub time_in_force: Option<TimeInForce>,
    pub smp_type: Option<SmpType>,
}

impl Validated {
    /// The total a budget order spends (a market buy, a best bid).
    pub fn budget(&self) -> Option<Decimal> {
        match self.amounts {
            Amounts::Total(total) => Some(total),
            _ => None,
        }
    }

    /// Whether what it does not fill at once waits on the book: a limit order
    /// that is neither IOC nor FOK.
    pub fn rests(&self) -> bool {
        self.ord_type == OrdType::Limit
            && !matches!(
                self.time_in_force,
                Some(TimeInForce::Ioc | TimeInForce::Fok)
            )
    }
}

/// One orderbook level on the side an order takes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    pub price: Decimal,
    pub size: Decimal,
}

/// An execution, before or after it is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exec {
    pub price: Decimal,
    pub volume: Decimal,
    pub funds: Decimal,
    pub fee: Decimal,
}

fn floor8(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(VOLUME_SCALE, RoundingStrategy::ToZero)
}

fn ceil8(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(VOLUME_SCALE, RoundingStrategy::AwayFromZero)
}

fn too_large() -> OrderError {
    OrderError::invalid("the order's amounts are too large")
}

/// `a × b`, or a validation error when it does not fit a decimal.
fn mul(a: Decimal, b: Decimal) -> Result<Decimal, OrderError> {
    a.checked_mul(b).ok_or_else(too_large)
}

/// `a + b`, or a validation error when it does not fit a decimal.
fn add(a: Decimal, b: Decimal) -> Result<Decimal, OrderError> {
    a.checked_add(b).ok_or_else(too_large)
}

/// Fee of a fill of `funds` on an order that had executed `before`: what the
/// fee on all its executed funds, rounded down to 8 decimals once, grows by.
/// However an order is sliced into fills, its fees add up to its funds × rate
/// rounded down, never more than was reserved for them, and never to a sum of
/// per-fill roundings that lets small slices go free. Inventory checks fills
/// against exactly this rule.
pub fn fee(before: Decimal, funds: Decimal, rate: Decimal) -> Result<Decimal, OrderError> {
    let after = add(before, funds)?;
    Ok(floor8(mul(after, rate)?) - floor8(mul(before, rate)?))
}

/// A decimal written by a client (empty = not given): a plain positive
/// decimal within the wire bounds, never rounded.
pub fn parse_amount(field: &str, text: &str) -> Result<Option<Decimal>, OrderError> {
    decimal::optional_positive(field, text).map_err(|e| OrderError::invalid(e.to_string()))
}

fn named(side: Side, bid: &'static str, ask: &'static str) -> &'static str {
    match side {
        Side::Bid => bid,
        Side::Ask => ask,
    }
}

/// Upbit's name for an order request it cannot accept as asked (a duplicate
/// identifier, too many open orders).
pub fn create_error(side: Side) -> &'static str {
    named(side, "create_bid_error", "create_ask_error")
}

/// Validates an order the way Upbit does and computes what it must reserve.
/// `reference_price` is the best price on the other side, for market sells.
pub fn validate(
    market: &str,
    side: Side,
    ord_type: OrdType,
    price: Option<Decimal>,
    volume: Option<Decimal>,
    fee_rate: Decimal,
    reference_price: Option<Decimal>,
) -> Result<Validated, OrderError> {
    let market = MarketCode::parse(market).map_err(|e| OrderError::invalid(e.to_string()))?;
    let quote = market.quote().to_owned();
    let min = min_order_total(&quote);
    if let Some(v) = volume
        && v.normalize().scale() > VOLUME_SCALE
    {
        return Err(OrderError::invalid("volume has more than 8 decimal places"));
    }
    let (amounts, total, reserve_currency, reserve_amount) = match (ord_type, side) {
        (OrdType::Limit, _) => {
            let (Some(p), Some(v)) = (price, volume) else {
                return Err(OrderError::invalid("a limit order needs price and volume"));
            };
            if !is_on_tick(&quote, p) {
                return Err(OrderError::Named(
                    named(side, "invalid_price_bid", "invalid_price_ask"),
                    format!("price {p} is not a multiple of the {quote} tick size for that price"),
                ));
            }
            let total = mul(p, v)?;
            let amounts = Amounts::Limit {
                price: p,
                volume: v,
            };
            match side {
                Side::Bid => (
                    amounts,
                    total,
                    quote.clone(),
                    add(total, ceil8(mul(total, fee_rate)?))?,
                ),
                Side::Ask => (amounts, total, market.base().to_owned(), v),
            }
        }
        (OrdType::Price | OrdType::Best, Side::Bid) => {
            let kind = ord_type.as_str();
            let Some(total) = price else {
                return Err(OrderError::invalid(format!(
                    "a bid with ord_type={kind} needs price: the total to spend"
                )));
            };
            if volume.is_some() {
                return Err(OrderError::invalid(format!(
                    "a bid with ord_type={kind} takes no volume"
                )));
            }
            if total.normalize().scale() > VOLUME_SCALE {
                return Err(OrderError::invalid("price has more than 8 decimal places"));
            }
            (
                Amounts::Total(total),
                total,
                quote.clone(),
                add(total, ceil8(mul(total, fee_rate)?))?,
            )
        }
        (OrdType::Market | OrdType::Best, Side::Ask) => {
            let kind = ord_type.as_str();
            let Some(v) = volume else {
                return Err(OrderError::invalid(format!(
                    "an ask with ord_type={kind} needs volume"
                )));
            };
            if price.is_some() {
                return Err(OrderError::invalid(format!(
                    "an ask with ord_type={kind} takes no price"
                )));
            }
            let reference = reference_price
                .ok_or_else(|| OrderError::invalid("no bids in the orderbook to sell into"))?;
            (
                Amounts::Volume(v),
                mul(reference, v)?,
                market.base().to_owned(),
                v,
            )
        }
        (OrdType::Price, Side::Ask) => {
            return Err(OrderError::invalid(
                "ord_type=price is for bids (market buys)",
            ));
        }
        (OrdType::Market, Side::Bid) => {
            return Err(OrderError::invalid(
                "ord_type=market is for asks (market sells)",
            ));
        }
    };
    if total < min {
        return Err(OrderError::Named(
            named(side, "under_min_total_bid", "under_min_total_ask"),
            format!("the order total must be at least {min} {quote}"),
        ));
    }
    if quote == "KRW" && total > max_total() {
        return Err(OrderError::invalid(format!(
            "the order total must be at most {} KRW",
            max_total()
        )));
    }
    Ok(Validated {
        market,
        side,
        ord_type,
        amounts,
        reserve_currency,
        reserve_amount,
        fee_rate,
        time_in_force: None,
        smp_type: None,
    })
}

/// The order with its conditions, checked against its type as Upbit does:
/// `best` needs IOC or FOK; IOC and FOK are for limit and best orders,
/// post_only for limit orders and not with a self-match prevention type.
pub fn with_conditions(
    mut order: Validated,
    time_in_force: Option<TimeInForce>,
    smp_type: Option<SmpType>,
) -> Result<Validated, OrderError> {
    use TimeInForce::{Fok, Ioc, PostOnly};
    match (order.ord_type, time_in_force) {
        (OrdType::Best, None | Some(PostOnly)) => {
            return Err(OrderError::invalid(
                "ord_type=best needs time_in_force ioc or fok",
            ));
        }
        (OrdType::Price | OrdType::Market, Some(_)) => {
            return Err(OrderError::invalid(
                "time_in_force is for limit and best orders",
            ));
        }
        (OrdType::Limit | OrdType::Best, Some(Ioc | Fok)) | (OrdType::Limit, Some(PostOnly)) => {}
        (_, None) => {}
    }
    if time_in_force == Some(PostOnly) && smp_type.is_some_and(|s| s != SmpType::None) {
        return Err(OrderError::invalid(
            "post_only cannot be combined with smp_type reduce, cancel_maker or cancel_taker",
        ));
    }
    order.time_in_force = time_in_force;
    order.smp_type = Some(effective_smp(time_in_force, smp_type));
    Ok(order)
}

/// The self-match prevention an order gets: as given, or Upbit's default
/// (since 2026-11-09): `cancel_maker`, and `none` for post_only orders.
pub fn effective_smp(time_in_force: Option<TimeInForce>, given: Option<SmpType>) -> SmpType {
    given.unwrap_or(if time_in_force == Some(TimeInForce::PostOnly) {
        SmpType::None
    } else {
        SmpType::CancelMaker
    })
}

/// What an order does against the book when it is placed.
#[derive(Clone, Debug, PartialEq)]
pub enum Placement {
    /// These executions now (maybe none); the rest waits on the book if the
    /// order [`Validated::rests`], and is cancelled if not.
    Fills(Vec<Exec>),
    /// A post_only order that would take: cancelled before anything is
    /// reserved or filled.
    WouldTake,
}

/// How an order meets `levels` (best first, the side it takes from), by its
/// type and time in force: a best order takes only the best price; FOK all or
/// nothing; post_only nothing, or it is not placed.
pub fn place(order: &Validated, levels: &[Level]) -> Result<Placement, OrderError> {
    let levels = match order.ord_type {
        OrdType::Best => &levels[..levels.len().min(1)],
        _ => levels,
    };
    let fills = walk(order, levels)?;
    Ok(match order.time_in_force {
        Some(TimeInForce::PostOnly) if !fills.is_empty() => Placement::WouldTake,
        Some(TimeInForce::Fok) if !fully_filled(order, &fills) => Placement::Fills(Vec::new()),
        _ => Placement::Fills(fills),
    })
}

/// The state an order reaches with these immediate executions.
pub fn placed_state(order: &Validated, fills: &[Exec]) -> State {
    if fully_filled(order, fills) {
        State::Done
    } else if order.rests() {
        State::Wait
    } else {
        State::Cancel
    }
}

/// The executions of an order taking from `levels` (best first: asks for
/// bids, bids for asks). A `Price` order spends up to its total; others fill up
/// to their volume; a limit stops at its price. Fees follow [`fee`]: the order
/// has executed nothing before.
pub fn walk(order: &Validated, levels: &[Level]) -> Result<Vec<Exec>, OrderError> {
    let mut out = Vec::new();
    let mut executed_funds = Decimal::ZERO;
    let budgeted = order.budget().is_some();
    let mut budget = order.budget().unwrap_or_default();
    let mut remaining = order.amounts.volume().unwrap_or_default();
    let limit = order.amounts.limit_price();
    for level in levels {
        if level.size <= Decimal::ZERO || level.price <= Decimal::ZERO {
            continue;
        }
        if let Some(limit) = limit {
            let crosses = match order.side {
                Side::Bid => level.price <= limit,
                Side::Ask => level.price >= limit,
            };
            if !crosses {
                break;
            }
        }
        let volume = if budgeted {
            floor8(budget / level.price).min(level.size)
        } else {
            remaining.min(level.size)
        };
        if volume <= Decimal::ZERO {
            break;
        }
        let funds = mul(level.price, volume)?;
        out.push(Exec {
            price: level.price,
            volume,
            funds,
            fee: fee(executed_funds, funds, order.fee_rate)?,
        });
        executed_funds = add(executed_funds, funds)?;
        budget -= funds;
        remaining -= volume;
        if !budgeted && remaining <= Decimal::ZERO {
            break;
        }
    }
    Ok(out)
}

/// Whether executions complete the order: its volume filled, or for a market
/// buy, so little of the total left that not even the smallest volume at the
/// last price could be bought.
pub fn fully_filled(order: &Validated, execs: &[Exec]) -> bool {
    let executed: Decimal = execs.iter().map(|e| e.volume).sum();
    let spent: Decimal = execs.iter().map(|e| e.funds).sum();
    match order.budget() {
        Some(total) => {
            let last = execs.last().map(|e| e.price).unwrap_or(total);
            total - spent < last * Decimal::new(1, VOLUME_SCALE)
        }
        None => executed >= order.amounts.volume().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn lv(p: &str, s: &str) -> Level {
        Level {
            price: d(p),
            size: d(s),
        }
    }

    const FEE: &str = "0.0005";

    #[test]
    fn stored_names_read_back_and_unknown_ones_are_errors() {
        for side in [Side::Bid, Side::Ask] {
            assert_eq!(Side::try_from(side.as_str().to_owned()), Ok(side));
        }
        for t in [
            OrdType::Limit,
            OrdType::Price,
            OrdType::Market,
            OrdType::Best,
        ] {
            assert_eq!(OrdType::try_from(t.as_str().to_owned()), Ok(t));
        }
        for s in [
            State::Pending,
            State::Wait,
            State::Done,
            State::Cancel,
            State::Rejected,
        ] {
            assert_eq!(State::try_from(s.as_str().to_owned()), Ok(s));
        }
        assert!(Side::try_from("BID".to_owned()).is_err(), "case matters");
        assert_eq!(
            State::try_from("open".to_owned()),
            Err("`open` is not a stored State".to_owned())
        );
    }

    #[test]
    fn validation_follows_upbit() {
        let v = validate(
            "KRW-BTC",
            Side::Bid,
            OrdType::Limit,
            Some(d("148000000")),
            Some(d("0.01")),
            d(FEE),
            None,
        )
        .unwrap();
        assert_eq!(
            (v.reserve_currency.as_str(), v.reserve_amount),
            ("KRW", d("1480740"))
        );
        let err = validate(
            "KRW-BTC",
            Side::Bid,
            OrdType::Limit,
            Some(d("148000500")),
            Some(d("0.01")),
            d(FEE),
            None,
        )
        .unwrap_err();
        assert_eq!(err.name(), "invalid_price_bid");
        let err = validate(
            "KRW-BTC",
            Side::Ask,
            OrdType::Limit,
            Some(d("148000000")),
            Some(d("0.00003")),
            d(FEE),
            None,
        )
        .unwrap_err();
        assert_eq!(err.name(), "under_min_total_ask");
        let err = validate(
            "KRW-BTC",
            Side::Bid,
            OrdType::Price,
            Some(d("4999")),
            None,
            d(FEE),
            None,
        )
        .unwrap_err();
        assert_eq!(err.name(), "under_min_total_bid");
        let v = validate(
            "KRW-BTC",
            Side::Bid,
            OrdType::Price,
            Some(d("1000000")),
            None,
            d(FEE),
            None,
        )
        .unwrap();
        assert_eq!(v.reserve_amount, d("1000500"));
        let v = validate(
            "KRW-ETH",
            Side::Ask,
            OrdType::Market,
            None,
            Some(d("0.5")),
            d(FEE),
            Some(d("5000000")),
        )
        .unwrap();
        assert_eq!(
            (v.reserve_currency.as_str(), v.reserve_amount),
            ("ETH", d("0.5"))
        );
        for bad in [
            validate(
                "KRW-BTC",
                Side::Ask,
                OrdType::Price,
                Some(d("10000")),
                None,
                d(FEE),
                None,
            ),
            validate(
                "KRW-BTC",
                Side::Bid,
                OrdType::Market,
                None,
                Some(d("1")),
                d(FEE),
                None,
            ),
            validate(
                "KRW-BTC",
                Side::Bid,
                OrdType::Limit,
                Some(d("148000000")),
                None,
                d(FEE),
                None,
            ),
            validate(
                "KRW-BTC",
                Side::Bid,
                OrdType::Limit,
                Some(d("148000000")),
                Some(d("0.000000001")),
                d(FEE),
                None,
            ),
            validate(
                "krw-btc",
                Side::Bid,
                OrdType::Price,
                Some(d("10000")),
                None,
                d(FEE),
                None,
            ),
            validate(
                "KRW-BTC",
                Side::Bid,
                OrdType::Limit,
                Some(d("148000000")),
                Some(d("10")),
                d(FEE),
                None,
            ),
        ] {
            assert_eq!(bad.unwrap_err().name(), "validation_error");
        }
        assert!(parse_amount("price", "1e5").is_err());
        assert!(parse_amount("price", "-5").is_err());
        assert_eq!(parse_amount("price", "").unwrap(), None);
    }

    #[test]
    fn amounts_too_large_for_a_decimal_are_refused_not_panics() {
        // On the 1,000 KRW tick, so only the size can refuse it.
        let err = parse_amount("price", "79228162514264337593543950000").unwrap_err();
        assert_eq!(err.name(), "validation_error");
        let huge = Some(d("99999999999999999000"));
        for (side, ord_type, price, volume, reference) in [
            (Side::Bid, OrdType::Limit, huge, huge, None),
            (Side::Ask, OrdType::Limit, huge, huge, None),
            (Side::Ask, OrdType::Market, None, huge, huge),
        ] {
            let err =
                validate("KRW-BTC", side, ord_type, price, volume, d(FEE), reference).unwrap_err();
            assert_eq!(err.name(), "validation_error", "{side:?} {ord_type:?}");
        }
        // A bid total near the largest decimal: the fee on top does not fit.
        let near_max = Decimal::MAX - Decimal::ONE;
        let err = validate(
            "BTC-ETH",
            Side::Bid,
            OrdType::Price,
            Some(near_max),
            None,
            d(FEE),
            None,
        )
        .unwrap_err();
        assert_eq!(err.name(), "validation_error");
        // Walking a book whose prices do not fit the volume stops with an error.
        let sell = validate(
            "BTC-ETH",
            Side::Ask,
            OrdType::Market,
            None,
            Some(d("10000000000")),
            d(FEE),
            Some(d("0.00001")),
        )
        .unwrap();
        assert!(walk(&sell, &[lv("99999999999999999999", "10000000000")]).is_err());
    }

    #[test]
    fn amounts_read_back_from_storage_as_validated_and_odd_rows_are_refused() {
        let cases = [
            (Side::Bid, OrdType::Limit, Some("100000000"), Some("0.01")),
            (Side::Ask, OrdType::Limit, Some("100000000"), Some("0.01")),
            (Side::Bid, OrdType::Price, Some("10000"), None),
            (Side::Bid, OrdType::Best, Some("10000"), None),
            (Side::Ask, OrdType::Market, None, Some("0.01")),
            (Side::Ask, OrdType::Best, None, Some("0.01")),
        ];
        for (side, ord_type, price, volume) in cases {
            let (price, volume) = (price.map(d), volume.map(d));
            let order = validate(
                "KRW-BTC",
                side,
                ord_type,
                price,
                volume,
                d(FEE),
                Some(d("100000000")),
            )
            .unwrap();
            let (p, v) = (order.amounts.price(), order.amounts.volume());
            assert_eq!((p, v), (price, volume), "{side:?} {ord_type:?}");
            let back = Amounts::stored(ord_type, side, p, v);
            assert_eq!(back, Some(order.amounts), "{side:?} {ord_type:?}");
        }
        let (one, none) = (Some(d("1")), None);
        for (side, ord_type, price, volume) in [
            (Side::Bid, OrdType::Limit, one, none),
            (Side::Bid, OrdType::Price, one, one),
            (Side::Ask, OrdType::Price, one, none),
            (Side::Bid, OrdType::Market, none, one),
            (Side::Ask, OrdType::Best, one, one),
        ] {
            let back = Amounts::stored(ord_type, side, price, volume);
            assert_eq!(back, None, "{side:?} {ord_type:?} {price:?} {volume:?}");
        }
    }

    #[test]
    fn fees_add_up_to_the_whole_orders_fee_however_it_is_sliced() {
        // A minimum-size order on a BTC market: per-fill rounding let slices of
        // under 0.00002 BTC go free (security review L11).
        let rate = d(FEE);
        let whole = fee(Decimal::ZERO, d("0.00005"), rate).unwrap();
        assert_eq!(whole, d("0.00000002"));
        for slices in [
            vec!["0.00005"],
            vec!["0.00001"; 5],
            vec!["0.00003", "0.00001", "0.00001"],
        ] {
            let mut before = Decimal::ZERO;
            let mut paid = Decimal::ZERO;
            for funds in slices.iter().map(|f| d(f)) {
                let charged = fee(before, funds, rate).unwrap();
                assert!(charged >= Decimal::ZERO);
                paid += charged;
                before += funds;
            }
            assert_eq!(paid, whole, "{slices:?}");
        }
        // And in a walk over several levels.
        let order = validate(
            "BTC-ETH",
            Side::Bid,
            OrdType::Limit,
            Some(d("0.02")),
            Some(d("0.005")),
            rate,
            None,
        )
        .unwrap();
        let asks = [lv("0.01999", "0.001"), lv("0.02", "0.004")];
        let execs = walk(&order, &asks).unwrap();
        let funds: Decimal = execs.iter().map(|e| e.funds).sum();
        let paid: Decimal = execs.iter().map(|e| e.fee).sum();
        assert_eq!(paid, fee(Decimal::ZERO, funds, rate).unwrap());
        assert_eq!(execs[0].fee, Decimal::ZERO, "under the rounding alone");
        assert_eq!(paid, d("0.00000004"));
    }

    #[test]
    fn a_market_buy_walks_the_asks_and_stays_within_its_total() {
        let order = validate(
            "KRW-BTC",
            Side::Bid,
            OrdType::Price,
            Some(d("1000000")),
            None,
            d(FEE),
            None,
        )
        .unwrap();
        let asks = [
            lv("148000000", "0.005"),
            lv("148001000", "0.002"),
            lv("148002000", "1"),
        ];
        let execs = walk(&order, &asks).unwrap();
        assert_eq!(execs.len(), 2, "the first level and part of the second");
        assert_eq!(
            (execs[0].volume, execs[0].funds, execs[0].fee),
            (d("0.005"), d("740000"), d("370"))
        );
        assert_eq!(
            execs[1].volume,
            d("0.00175674"),
            "the rest of the total, rounded down to 8 places"
        );
        assert_eq!(execs[1].funds, d("259999.27674"));
        assert_eq!(execs[1].fee, d("129.99963837"), "fee rounded down");
        let spent: Decimal = execs.iter().map(|e| e.funds + e.fee).sum();
        assert!(spent <= order.reserve_amount);
        assert!(fully_filled(&order, &execs));
        // A thin book: partial fill, the rest stays for release.
        let thin = walk(&order, &[lv("148000000", "0.001")]).unwrap();
        assert_eq!(thin.len(), 1);
        assert!(!fully_filled(&order, &thin));
    }

    #[test]
    fn sells_and_limits_take_only_what_crosses() {
        let sell = validate(
            "KRW-ETH",
            Side::Ask,
            OrdType::Market,
            None,
            Some(d("1.5")),
            d(FEE),
            Some(d("5200000")),
        )
        .unwrap();
        let bids = [lv("5200000", "1"), lv("5199000", "0.2"), lv("5198000", "5")];
        let execs = walk(&sell, &bids).unwrap();
        assert_eq!(
            execs.iter().map(|e| e.volume).collect::<Vec<_>>(),
            vec![d("1"), d("0.2"), d("0.3")]
        );
        assert!(fully_filled(&sell, &execs));
        let limit = validate(
            "KRW-ETH",
            Side::Ask,
            OrdType::Limit,
            Some(d("5199000")),
            Some(d("2")),
            d(FEE),
            None,
        )
        .unwrap();
        let execs = walk(&limit, &bids).unwrap();
        assert_eq!(
            execs.iter().map(|e| e.volume).collect::<Vec<_>>(),
            vec![d("1"), d("0.2")],
            "stops at the limit"
        );
        assert!(!fully_filled(&limit, &execs));
        let resting = validate(
            "KRW-ETH",
            Side::Bid,
            OrdType::Limit,
            Some(d("5000000")),
            Some(d("1")),
            d(FEE),
            None,
        )
        .unwrap();
        assert!(
            walk(&resting, &[lv("5200000", "1")]).unwrap().is_empty(),
            "a bid under the best ask rests"
        );
    }
}
