//! End-to-end tests of the whole system (one test binary).

mod api_keys;
mod bad_input;
mod compat;
mod foundation;
mod market;
mod private_ws;
mod stack;
mod trading;
mod web;
