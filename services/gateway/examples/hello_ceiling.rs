//! The ceiling for `scripts/bench-quotation`: an axum server that answers every
//! GET with the same bytes (a body captured from the gateway), on the same
//! runtime settings, so wrk against it measures what this machine's HTTP stack
//! can do with a reply of that size and nothing else.
//!
//! Usage: hello_ceiling --port PORT --body FILE

use axum::http::header;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut port, mut body) = (0u16, None);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--port" => port = args.next().unwrap_or_default().parse()?,
            "--body" => body = Some(std::fs::read(args.next().unwrap_or_default())?),
            other => anyhow::bail!("unknown argument {other} (--port PORT --body FILE)"),
        }
    }
    let body = bytes::Bytes::from(body.ok_or_else(|| anyhow::anyhow!("--body FILE is required"))?);
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move {
            (
                [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
                body,
            )
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
