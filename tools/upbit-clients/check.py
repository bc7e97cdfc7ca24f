"""Trade on the exchange with unmodified public Upbit client libraries.

What a bot does every day, each through a library as published: prices for a
list of markets, orders with each time in force, cancel-and-replace, 1-second and
yearly candles, deposits, and the private WebSocket (ccxt.pro).

ccxt (the most used trading library) is pointed at the gateway the way it
supports: its `urls['api']`. pyupbit has api.upbit.com written into each call,
so only its HTTP transport is redirected; its signing code runs as published.
Each library signs requests its own way (ccxt: JSON bodies, query_hash of its
raw `k=v&...`; pyupbit: GET parameters in a form body, query_hash of Python's
urlencode), and each must be accepted.

Usage: BASE_URL=http://127.0.0.1:PORT ACCESS_KEY=... SECRET_KEY=... python check.py
Prints one line per step; exits non-zero at the first step that fails.
"""

import asyncio
import os
import sys

import requests

BASE = os.environ["BASE_URL"].rstrip("/")
ACCESS = os.environ["ACCESS_KEY"]
SECRET = os.environ["SECRET_KEY"]


def step(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}".rstrip(), flush=True)
    if not ok:
        sys.exit(1)


def check_ccxt():
    import ccxt

    ex = ccxt.upbit({"apiKey": ACCESS, "secret": SECRET, "enableRateLimit": False})
    ex.urls["api"] = {"public": BASE, "private": BASE}
    markets = ex.load_markets()
    step("ccxt load_markets", "ETH/KRW" in markets, f"{len(markets)} markets")
    ticker = ex.fetch_ticker("ETH/KRW")
    step("ccxt fetch_ticker", ticker["last"] is not None and ticker["last"] > 0, str(ticker["last"]))
    balance = ex.fetch_balance()
    step("ccxt fetch_balance", balance["KRW"]["free"] > 0, str(balance["KRW"]))
    order = ex.create_order("ETH/KRW", "limit", "buy", 0.01, 3000000)
    step("ccxt create_order", bool(order["id"]), order["id"])
    fetched = ex.fetch_order(order["id"])
    step("ccxt fetch_order", fetched["id"] == order["id"] and fetched["status"] == "open", fetched["status"])
    opened = ex.fetch_open_orders("ETH/KRW")
    step("ccxt fetch_open_orders", any(o["id"] == order["id"] for o in opened), f"{len(opened)} open")
    ex.cancel_order(order["id"])
    step("ccxt cancel_order", ex.fetch_order(order["id"])["status"] == "canceled")
    # Order conditions as ccxt sends them: an IOC bid below the asks fills
    # nothing and is cancelled at once; a post-only bid that would take too.
    ioc = ex.create_order("ETH/KRW", "limit", "buy", 0.01, 3000000, {"timeInForce": "IOC"})
    ioc = ex.fetch_order(ioc["id"])
    step("ccxt IOC order", ioc["status"] == "canceled" and ioc["filled"] == 0, f"{ioc['status']} {ioc['filled']}")
    taker = ex.create_order("ETH/KRW", "limit", "buy", 0.01, 5000000, {"postOnly": True})
    taker = ex.fetch_order(taker["id"])
    step("ccxt post-only order that would take", taker["status"] == "canceled" and taker["filled"] == 0, taker["status"])
    fok = ex.create_order("ETH/KRW", "limit", "buy", 0.01, 3000000, {"timeInForce": "FOK"})
    fok = ex.fetch_order(fok["id"])
    step("ccxt FOK order", fok["status"] == "canceled" and fok["filled"] == 0, f"{fok['status']} {fok['filled']}")
    # Cancel-and-replace (POST /v1/orders/cancel_and_new).
    resting = ex.create_order("ETH/KRW", "limit", "buy", 0.01, 3000000)
    edited = ex.edit_order(resting["id"], "ETH/KRW", "limit", "buy", 0.01, 3100000)
    new_id = edited["id"]  # ccxt answers the replacement's uuid
    replaced = ex.fetch_order(new_id) if new_id else {}
    step("ccxt edit_order", ex.fetch_order(resting["id"])["status"] == "canceled" and replaced.get("price") == 3100000,
         str(replaced.get("price")))
    ex.cancel_order(new_id)
    tickers = ex.fetch_tickers(["ETH/KRW", "BTC/KRW"])
    step("ccxt fetch_tickers (a list of markets)", set(tickers) == {"ETH/KRW", "BTC/KRW"}, str(sorted(tickers)))
    seconds = ex.fetch_ohlcv("ETH/KRW", "1s", limit=5)
    step("ccxt fetch_ohlcv 1s", len(seconds) >= 1 and seconds[0][4] > 0, str(seconds[:1]))
    years = ex.fetch_ohlcv("ETH/KRW", "1y", limit=2)
    step("ccxt fetch_ohlcv 1y", len(years) >= 1, str(years[:1]))
    deposits = ex.fetch_deposits("KRW")
    step("ccxt fetch_deposits", len(deposits) >= 1 and deposits[0]["status"] == "ok", str(deposits[:1])[:200])


def check_pyupbit():
    import pyupbit

    # Redirect the transport only: every call goes to the gateway instead.
    send = requests.Session.request

    def redirected(self, method, url, *args, **kwargs):
        if url.startswith("https://api.upbit.com"):
            url = BASE + url[len("https://api.upbit.com"):]
        return send(self, method, url, *args, **kwargs)

    requests.Session.request = redirected
    up = pyupbit.Upbit(ACCESS, SECRET)
    prices = pyupbit.get_current_price(["KRW-ETH", "KRW-BTC"])
    step("pyupbit get_current_price (a list)", isinstance(prices, dict) and set(prices) == {"KRW-ETH", "KRW-BTC"}, str(prices))
    balances = up.get_balances()
    step("pyupbit get_balances", isinstance(balances, list) and any(b["currency"] == "KRW" for b in balances), str(balances)[:200])
    order = up.buy_limit_order("KRW-ETH", 3000000, 0.01)
    step("pyupbit buy_limit_order", isinstance(order, dict) and "uuid" in order, str(order)[:200])
    listed = up.get_order("KRW-ETH")
    step("pyupbit get_order (market)", isinstance(listed, list) and any(o["uuid"] == order["uuid"] for o in listed), str(listed)[:200])
    one = up.get_order(order["uuid"])
    step("pyupbit get_order (uuid)", isinstance(one, dict) and one.get("uuid") == order["uuid"], str(one)[:200])
    cancelled = up.cancel_order(order["uuid"])
    step("pyupbit cancel_order", isinstance(cancelled, dict) and cancelled.get("uuid") == order["uuid"], str(cancelled)[:200])


async def check_ccxt_pro():
    """ccxt's WebSocket side (ccxt.pro, in the same package): the private
    socket's myOrder and myAsset, as watch_orders and watch_balance read them."""
    import ccxt.pro

    ex = ccxt.pro.upbit({"apiKey": ACCESS, "secret": SECRET, "enableRateLimit": False})
    ex.urls["api"] = {"public": BASE, "private": BASE, "ws": "ws" + BASE[len("http"):] + "/websocket/v1"}
    try:
        await ex.load_markets()
        watching = asyncio.ensure_future(ex.watch_orders("ETH/KRW"))
        await asyncio.sleep(1)
        order = await ex.create_order("ETH/KRW", "limit", "buy", 0.01, 3000000)
        orders = await asyncio.wait_for(watching, 10)
        mine = [o for o in orders if o["id"] == order["id"]]
        step("ccxt.pro watch_orders", bool(mine) and mine[-1]["status"] == "open", str([o["status"] for o in orders]))
        balance = asyncio.ensure_future(ex.watch_balance())
        await asyncio.sleep(1)
        await ex.cancel_order(order["id"])
        balance = await asyncio.wait_for(balance, 10)
        step("ccxt.pro watch_balance", balance["KRW"]["free"] > 0, str(balance["KRW"]))
    finally:
        await ex.close()


check_ccxt()
asyncio.run(check_ccxt_pro())
check_pyupbit()
print("all client checks passed")
