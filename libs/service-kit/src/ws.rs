//! Reading a server-side WebSocket in its own task.
//!
//! A connection loop that `select!`s on both the socket and a busy outgoing
//! source would poll the socket's read future once per outgoing message; each
//! such poll makes tungstenite prepare its read buffer again, which dominates the
//! cost of a busy stream. Reading in a separate task that forwards only what the
//! client sends keeps the writing loop cheap.

use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use tokio::sync::mpsc;

/// What the client sent.
#[derive(Debug)]
pub enum Incoming {
    /// A text frame (or a binary one holding UTF-8).
    Text(String),
    /// A ping or pong: the client is alive.
    Heard,
}

/// The reading half of a connection, running in its own task. Dropping it stops
/// the task and so releases the socket (both halves must go for it to close).
pub struct Reader {
    rx: mpsc::Receiver<Incoming>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    /// The next client frame; `None` once the client closed or failed.
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.rx.recv().await
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards client frames until the client closes or errs (then `recv` ends).
pub fn spawn_reader(mut stream: SplitStream<WebSocket>) -> Reader {
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let incoming = match message {
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => Incoming::Heard,
                Message::Text(t) => Incoming::Text(t.to_string()),
                Message::Binary(b) => Incoming::Text(String::from_utf8_lossy(&b).into_owned()),
            };
            if tx.send(incoming).await.is_err() {
                break;
            }
        }
    });
    Reader { rx, task }
}
