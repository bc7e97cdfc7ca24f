//! Benchmark: the matcher's work per trade against the number of open orders.
//!
//! The matcher keeps each market's open limit orders in price-ordered trees
//! (`order::book`) and, for each trade, takes the orders the trade crosses.
//! This times that step for a trade crossing `k` orders while `n` other orders
//! rest away from its price (bids below it, asks above), for `n` up to
//! `--max`. The ceiling beside each figure is the same step on a book holding
//! the `k` crossing orders and one order on each side that it does not cross,
//! measured in the same run: the cost per trade is independent of the open
//! orders when the ratio stays near 1.
//!
//! Usage: cargo run --release -p order --example matcher_book [-- --max 1000000]

#![allow(clippy::print_stdout, clippy::print_stderr)] // a report on stdout is its purpose

use std::hint::black_box;
use std::time::{Duration, Instant};

use order::book::{Book, Resting};
use order::domain::Side;
use rust_decimal::Decimal;
use uuid::Uuid;

const MARKET: &str = "KRW-BTC";
/// The trade's price; resting orders that do not cross it sit around it.
const TRADE_PRICE: i64 = 100_000_000;

fn resting(side: Side, price: i64, since_ms: i64) -> Resting {
    Resting {
        id: Uuid::now_v7(),
        side,
        price: Decimal::from(price),
        remaining: Decimal::new(1, 3),
        trades_count: 0,
        fee_rate: Decimal::new(5, 4),
        executed_funds: Decimal::ZERO,
        since_ms,
    }
}

/// `n` orders the trade does not cross (half bids under its price, half asks
/// over it, spread over 50,000 price levels) and `k` bids it does.
fn book(n: usize, k: usize) -> Book {
    let mut book = Book::default();
    for i in 0..n {
        let level = 1 + (i / 2 % 50_000) as i64;
        let order = if i % 2 == 0 {
            resting(Side::Bid, TRADE_PRICE - level * 1_000, i as i64)
        } else {
            resting(Side::Ask, TRADE_PRICE + level * 1_000, i as i64)
        };
        book.upsert(MARKET, Some(order.clone()), order.id);
    }
    for i in 0..k {
        let order = resting(Side::Bid, TRADE_PRICE + i as i64 * 1_000, i as i64);
        book.upsert(MARKET, Some(order.clone()), order.id);
    }
    book
}

/// Nanoseconds per trade: the orders it crosses, taken from the book.
fn per_trade(book: &Book, k: usize) -> f64 {
    let price = Decimal::from(TRADE_PRICE);
    let run = |times: u32| {
        let started = Instant::now();
        for _ in 0..times {
            let crossing = book.crossing(black_box(MARKET), black_box(price), i64::MAX);
            assert_eq!(crossing.len(), k);
            black_box(crossing);
        }
        started.elapsed()
    };
    let mut times = 1_000;
    while run(times) < Duration::from_millis(50) {
        times *= 2;
    }
    // The best of five: the least disturbed by the rest of the machine.
    (0..5)
        .map(|_| run(times).as_nanos() as f64 / f64::from(times))
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let mut max = 1_000_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--max", Some(v)) => max = v.parse().expect("--max takes a number"),
            _ => {
                eprintln!("usage: matcher_book [--max N]");
                std::process::exit(2);
            }
        }
    }
    println!(
        "| open orders not crossed | crossed | ns per trade | ceiling ns (2 not crossed) | × ceiling |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for k in [0usize, 1, 10] {
        let ceiling = per_trade(&book(2, k), k);
        let mut n = 1_000;
        while n <= max {
            let measured = per_trade(&book(n, k), k);
            println!(
                "| {n} | {k} | {measured:.0} | {ceiling:.0} | {:.2} |",
                measured / ceiling
            );
            n *= 10;
        }
    }
}
