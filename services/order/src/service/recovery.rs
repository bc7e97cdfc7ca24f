//! Recovery: finishing the orders a crash or a lost answer left half done
//! (see the parent module's docs), on the matcher's leader.

use std::time::Duration;

use chrono::Utc;
use exchange_proto::inventory::v1 as inv;
use uuid::Uuid;

use super::{CONFIRM_BATCH, Orders, Outcome, unavailable};
use crate::domain::{self, Amounts, OrdType, Placement, SmpType, State, TimeInForce, Validated};
use crate::error::OrderError;
use crate::record::Record;
use crate::store::{self, OrderRow};

/// Unfinished orders recovery works on at once.
const RECOVERY_CONCURRENCY: usize = 8;

/// Most batches of unconfirmed orders one recovery pass goes through.
const CONFIRM_PASSES: usize = 20;

impl Orders {
    /// Finishes orders a crash or a lost answer left half done (see the module
    /// docs). An order that cannot be finished now goes to the back of the
    /// queue; the others are not held up by it. Returns how many it finished.
    pub async fn recover(&self, min_age: Duration) -> Result<usize, OrderError> {
        use futures_util::StreamExt;
        // Inventory away (or older, without records): the rest goes on.
        let mut finished = self
            .recover_unconfirmed(min_age)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "recovery will retry writing and confirming recorded orders");
                0
            });
        let cutoff = Utc::now() - chrono::Duration::from_std(min_age).unwrap_or_default();
        let unfinished = store::unfinished(&self.pool, cutoff, 200).await?;
        // A few at a time: after an outage there may be many, each a few round trips.
        finished += futures_util::stream::iter(unfinished)
            .map(|row| self.recover_one(row))
            .buffer_unordered(RECOVERY_CONCURRENCY)
            .filter(|done| std::future::ready(*done))
            .count()
            .await;
        for row in store::unsettled_fills(&self.pool, cutoff, 200).await? {
            let settled = async {
                let reservation = self.reservation(row.id).await?;
                let behind = (reservation.last_fill_seq as i32) < row.trades_count;
                if behind {
                    self.settle_all(&row, false).await?;
                }
                store::mark_settled(&self.pool, row.id, row.trades_count).await?;
                Ok::<_, OrderError>(behind)
            };
            match settled.await {
                Ok(true) => finished += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(order = %row.id, error = %e, "recovery will retry settling this order's fills");
                    store::touch(&self.pool, row.id).await?;
                }
            }
        }
        Ok(finished)
    }

    /// Orders inventory holds a record of, made at least `min_age` ago, that
    /// were not confirmed: stored ones are confirmed now; those never stored
    /// (the placing process died between inventory's commit and its own) are
    /// written from their records first. PENDING ones are left to
    /// [`Self::recover_pending`]. Returns how many it wrote.
    async fn recover_unconfirmed(&self, min_age: Duration) -> Result<usize, OrderError> {
        let mut written = 0;
        for _ in 0..CONFIRM_PASSES {
            let listed = self
                .inventory
                .clone()
                .list_unconfirmed(inv::ListUnconfirmedRequest {
                    min_age_ms: min_age.as_millis() as i64,
                    limit: CONFIRM_BATCH as u32,
                })
                .await
                .map_err(|s| unavailable("inventory", &s))?
                .into_inner()
                .orders;
            let ids: Vec<Uuid> = listed
                .iter()
                .filter_map(|o| o.order_id.parse().ok())
                .collect();
            let states: std::collections::HashMap<Uuid, String> =
                store::states(&self.pool, &ids).await?.into_iter().collect();
            let mut stored = Vec::with_capacity(listed.len());
            for unconfirmed in &listed {
                let Ok(id) = unconfirmed.order_id.parse::<Uuid>() else {
                    continue;
                };
                match states.get(&id).map(String::as_str) {
                    Some("pending") => {}
                    Some(_) => stored.push(id),
                    None => match self.write_unstored(id, unconfirmed).await {
                        Ok(()) => {
                            written += 1;
                            stored.push(id);
                        }
                        Err(e) => {
                            tracing::warn!(order = %id, error = %e, "recovery will retry writing this order from its record")
                        }
                    },
                }
            }
            if !stored.is_empty() {
                self.inventory
                    .clone()
                    .confirm_orders(inv::ConfirmOrdersRequest {
                        order_ids: stored.iter().map(Uuid::to_string).collect(),
                    })
                    .await
                    .map_err(|s| unavailable("inventory", &s))?;
            }
            if listed.len() < CONFIRM_BATCH {
                break;
            }
        }
        Ok(written)
    }

    /// Writes an order inventory executed but this service never stored, from
    /// its record. A placement of it still in flight holds its id: this waits
    /// for it, and writes nothing if it stored the order. An identifier taken
    /// meanwhile by another order is dropped from this one (it was placed
    /// first, but its client was never told).
    async fn write_unstored(
        &self,
        id: Uuid,
        unconfirmed: &inv::UnconfirmedOrder,
    ) -> Result<(), OrderError> {
        let user: Uuid = unconfirmed
            .user_id
            .parse()
            .map_err(|_| OrderError::Internal(format!("order {id} has a malformed user")))?;
        let mut record = Record::held(&unconfirmed.order_record, id)?
            .ok_or_else(|| OrderError::Internal(format!("order {id} has an empty record")))?;
        let at = chrono::DateTime::from_timestamp_millis(unconfirmed.created_at)
            .unwrap_or_else(Utc::now);
        let written = match store::write_record(&self.pool, id, user, &record, at).await {
            Err(sqlx::Error::Database(db))
                if db.constraint() == Some("orders_identifier_unique") =>
            {
                tracing::error!(order = %id, identifier = ?record.identifier, "an executed order's identifier was taken by a later order; written without it");
                record.identifier = None;
                store::write_record(&self.pool, id, user, &record, at).await?
            }
            other => other?,
        };
        if written.is_some() {
            tracing::warn!(order = %id, "wrote an order inventory executed but its placement never stored");
            crate::metrics::FROM_RECORD
                .with_label_values(&["recovery"])
                .inc();
        }
        Ok(())
    }

    /// What inventory holds for an order.
    pub(super) async fn reservation(
        &self,
        id: Uuid,
    ) -> Result<inv::GetReservationResponse, OrderError> {
        Ok(self
            .inventory
            .clone()
            .get_reservation(inv::GetReservationRequest {
                order_id: id.to_string(),
            })
            .await
            .map_err(|s| unavailable("inventory", &s))?
            .into_inner())
    }

    /// Finishes one unfinished order if it can now; one that cannot goes to the
    /// back of the queue. Whether it was finished.
    async fn recover_one(&self, row: OrderRow) -> bool {
        let id = row.id;
        let result = if row.state == State::Pending {
            self.recover_pending(row).await
        } else {
            self.settle_all(&row, true).await.map(|()| true)
        };
        let outcome = match result {
            Ok(true) => {
                async {
                    if let Some(now) = store::get(&self.pool, id).await?
                        && now.state != State::Pending
                        && !now.finalized
                        && now.state != State::Wait
                    {
                        store::mark_finalized(&self.pool, id).await?;
                    }
                    tracing::info!(order = %id, "recovered an unfinished order");
                    Ok::<_, OrderError>(true)
                }
                .await
            }
            Ok(false) => store::touch(&self.pool, id)
                .await
                .map(|()| false)
                .map_err(Into::into),
            Err(OrderError::InsufficientFunds(_)) => {
                tracing::info!(order = %id, "recovered order rejected: insufficient funds");
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(order = %id, error = %e, "recovery will retry this order");
                store::touch(&self.pool, id)
                    .await
                    .map(|()| false)
                    .map_err(Into::into)
            }
        };
        outcome.unwrap_or_else(|e| {
            tracing::warn!(order = %id, error = %e, "recovery will retry this order");
            false
        })
    }

    /// Decides a PENDING order whose plan's deadline has passed: completes the
    /// plan if inventory executed it, plans it again if not. `Ok(false)` when it
    /// has to wait (no fresh book yet).
    async fn recover_pending(&self, row: OrderRow) -> Result<bool, OrderError> {
        let (side, ord_type) = (row.side, row.ord_type);
        let market = upbit::market::MarketCode::parse(&row.market)
            .map_err(|e| OrderError::Internal(e.to_string()))?;
        let amounts = Amounts::stored(ord_type, side, row.price, row.volume).ok_or_else(|| {
            OrderError::Internal(format!(
                "order {} has a price and volume its type does not allow",
                row.id
            ))
        })?;
        let order = Validated {
            market,
            side,
            ord_type,
            amounts,
            reserve_currency: row.reserved_currency.clone(),
            reserve_amount: row.reserved_amount,
            fee_rate: row.fee_rate,
            time_in_force: row.time_in_force.as_deref().and_then(TimeInForce::parse),
            smp_type: row.smp_type.as_deref().and_then(SmpType::parse),
        };
        let reservation = self.reservation(row.id).await?;
        if let Some(record) = Record::held(&reservation.order_record, row.id)? {
            // Inventory executed this order: write what it executed.
            store::write_record(&self.pool, row.id, row.user_id, &record, row.created_at).await?;
            crate::metrics::FROM_RECORD
                .with_label_values(&["recovery"])
                .inc();
            self.stored(row.id);
            return Ok(true);
        }
        let mut db = self.pool.acquire().await?;
        if reservation.exists {
            // Inventory executed the stored plan (placed before records were
            // kept, or confirmed since): record it.
            let plan = store::plan_from_json(&row.plan).ok_or_else(|| {
                OrderError::Internal(format!("order {} has a malformed plan", row.id))
            })?;
            return match self.complete_pending(&mut db, row, &order, &plan).await? {
                Outcome::Done(_) | Outcome::Earlier(_) => Ok(true),
                Outcome::Unknown => Ok(false),
            };
        }
        let age = (Utc::now() - row.created_at).to_std().unwrap_or_default();
        if age > self.rules.pending_give_up {
            store::reject(&self.pool, row.id, "could not be completed in time").await?;
            tracing::warn!(order = %row.id, "a pending order could not be completed in time; rejected");
            return Ok(true);
        }
        // Never executed: plan it again against the book as it is now.
        let levels = match self.levels(&row.market, side).await {
            Ok(levels) => levels,
            Err(OrderError::StaleMarket(why) | OrderError::Unavailable(why)) => {
                tracing::info!(order = %row.id, %why, "recovery waits for a live book");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let plan = match domain::place(&order, &levels) {
            Ok(Placement::WouldTake) => {
                // Nothing was reserved: a post_only order that would now take
                // is cancelled, as it would have been when placed.
                store::cancel_pending(&mut *db, row.id).await?;
                return Ok(true);
            }
            Ok(Placement::Fills(plan))
                if !plan.is_empty() || !matches!(ord_type, OrdType::Price | OrdType::Market) =>
            {
                plan
            }
            _ => {
                store::reject(&mut *db, row.id, "no liquidity for a market order").await?;
                return Ok(true);
            }
        };
        let Some(row) = store::replan(
            &self.pool,
            row.id,
            row.plan_deadline,
            &plan,
            self.rules.plan_ttl,
        )
        .await?
        else {
            return Ok(false);
        };
        match self.complete_pending(&mut db, row, &order, &plan).await? {
            Outcome::Done(done) | Outcome::Earlier(done) => {
                self.stored(done.id);
                Ok(true)
            }
            Outcome::Unknown => Ok(false),
        }
    }
}
