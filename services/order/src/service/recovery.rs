//! Recovery: finishing the orders a crash or a lost answer left half done
//! (see the parent module's docs), on the matcher's leader.

use std::time::Duration;

use chrono::Utc;
use exchange_proto::inventory::v1 as inv;
use uuid::Uuid;

use super::{Orders, Outcome, unavailable};
use crate::domain::{self, OrdType, Placement, SmpType, TimeInForce, Validated};
use crate::error::OrderError;
use crate::store::{self, OrderRow};

/// Unfinished orders recovery works on at once.
const RECOVERY_CONCURRENCY: usize = 8;

impl Orders {
    /// Finishes orders a crash or a lost answer left half done (see the module
    /// docs). An order that cannot be finished now goes to the back of the
    /// queue; the others are not held up by it. Returns how many it finished.
    pub async fn recover(&self, min_age: Duration) -> Result<usize, OrderError> {
        use futures_util::StreamExt;
        let cutoff = Utc::now() - chrono::Duration::from_std(min_age).unwrap_or_default();
        let unfinished = store::unfinished(&self.pool, cutoff, 200).await?;
        // A few at a time: after an outage there may be many, each a few round trips.
        let mut finished = futures_util::stream::iter(unfinished)
            .map(|row| self.recover_one(row))
            .buffer_unordered(RECOVERY_CONCURRENCY)
            .filter(|done| std::future::ready(*done))
            .count()
            .await;
        for row in store::waiting_with_fills(&self.pool, cutoff, 200).await? {
            let settled = async {
                let reservation = self.reservation(row.id).await?;
                if (reservation.last_fill_seq as i32) < row.trades_count {
                    self.settle_all(&row, false).await?;
                    return Ok::<_, OrderError>(true);
                }
                Ok(false)
            };
            match settled.await {
                Ok(true) => finished += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(order = %row.id, error = %e, "recovery will retry settling this order's fills")
                }
            }
        }
        Ok(finished)
    }

    /// What inventory holds for an order.
    async fn reservation(&self, id: Uuid) -> Result<inv::GetReservationResponse, OrderError> {
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
        let result = if row.state == "pending" {
            self.recover_pending(row).await
        } else {
            self.settle_all(&row, true).await.map(|()| true)
        };
        let outcome = match result {
            Ok(true) => {
                async {
                    if let Some(now) = store::get(&self.pool, id).await?
                        && now.state != "pending"
                        && !now.finalized
                        && now.state != "wait"
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
        let side = store::side_of(&row);
        let ord_type = OrdType::parse(&row.ord_type)
            .ok_or_else(|| OrderError::Internal("bad ord_type".into()))?;
        let market = upbit::market::MarketCode::parse(&row.market)
            .map_err(|e| OrderError::Internal(e.to_string()))?;
        let order = Validated {
            market,
            side,
            ord_type,
            price: row.price,
            volume: row.volume,
            reserve_currency: row.reserved_currency.clone(),
            reserve_amount: row.reserved_amount,
            fee_rate: row.fee_rate,
            time_in_force: row.time_in_force.as_deref().and_then(TimeInForce::parse),
            smp_type: row.smp_type.as_deref().and_then(SmpType::parse),
        };
        let reservation = self.reservation(row.id).await?;
        if reservation.exists {
            // Inventory executed the stored plan: record it.
            let plan = store::plan_from_json(&row.plan).ok_or_else(|| {
                OrderError::Internal(format!("order {} has a malformed plan", row.id))
            })?;
            return match self.complete_pending(row, &order, &plan).await? {
                Outcome::Done(_) => Ok(true),
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
                store::cancel_pending(&self.pool, row.id).await?;
                return Ok(true);
            }
            Ok(Placement::Fills(plan))
                if !plan.is_empty() || !matches!(ord_type, OrdType::Price | OrdType::Market) =>
            {
                plan
            }
            _ => {
                store::reject(&self.pool, row.id, "no liquidity for a market order").await?;
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
        match self.complete_pending(row, &order, &plan).await? {
            Outcome::Done(_) => Ok(true),
            Outcome::Unknown => Ok(false),
        }
    }
}
