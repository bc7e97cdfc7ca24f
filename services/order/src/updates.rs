//! Live order updates: every state change notifies `order_events`; one listener
//! per process fans the notifications out to the `StreamOrderUpdates` callers.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// (order, user) of a change.
pub type Change = (Uuid, Uuid);

/// Listens until `stop`, reconnecting when the database goes away.
pub async fn listen(
    pool: PgPool,
    tx: broadcast::Sender<Change>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let session = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen("order_events").await?;
            loop {
                let n = listener.recv().await?;
                let mut parts = n.payload().split(' ');
                if let (Some(Ok(order)), Some(Ok(user))) = (
                    parts.next().map(Uuid::parse_str),
                    parts.next().map(Uuid::parse_str),
                ) {
                    let _ = tx.send((order, user));
                }
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        };
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            result = session => {
                if let Err(e) = result {
                    tracing::warn!(error = %format!("{e:#}"), "order updates listener lost its connection; reconnecting");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
