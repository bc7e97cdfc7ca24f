//! Client spans for the databases: one per SQL statement and one per Redis
//! command, with OpenTelemetry's database attributes (`db.system.name`,
//! `db.operation.name`, `db.query.text` without values, `server.address`), as
//! children of the operation that ran them.
//!
//! **SQL.** sqlx has no spans of its own; after each statement it emits a
//! `tracing` event (target `sqlx::query`) with the statement's text, its
//! placeholders unfilled, and how long it took. [`SqlSpans`] turns that event
//! into a span that started `elapsed` ago and ended now. The span is held open
//! (already timed) until the next statement of the same operation, the
//! operation's end, or [`failed`], which marks it as the statement that failed:
//! sqlx's event does not say whether a statement succeeded, the error reaches
//! the caller right after it. Statements outside any traced operation
//! (background loops without a span) are not traced.
//!
//! **Redis.** [`redis`] wraps one command (or pipeline, or script) in a span.

use std::borrow::Cow;
use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;
use tracing::Instrument;
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer;
use tracing_subscriber::registry::LookupSpan;

/// The target of the events [`failed`] emits.
const FAILED_TARGET: &str = "telemetry::db::failed";
/// sqlx's per-statement events.
const SQLX_TARGET: &str = "sqlx::query";
/// Longest `db.query.text` kept (statements are ours and short; a generated
/// one is cut, never its values, which are never in it).
const MAX_QUERY_TEXT: usize = 2048;

static POSTGRES_SERVER: OnceLock<(String, u16)> = OnceLock::new();
static REDIS_SERVER: OnceLock<(String, u16)> = OnceLock::new();

/// Names the Postgres server this process talks to (`server.address`,
/// `server.port` on every SQL span). The first call wins.
pub fn set_postgres_server(host: &str, port: u16) {
    let _ = POSTGRES_SERVER.set((host.to_owned(), port));
}

/// Names the Redis server this process talks to, from its `redis://` URL
/// (credentials are never kept). The first call wins.
pub fn set_redis_url(url: &str) {
    let _ = REDIS_SERVER.set(redis_server(url));
}

fn redis_server(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host_port.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host_port.starts_with('[') => (
            host.trim_matches(['[', ']']).to_owned(),
            port.parse().unwrap_or(6379),
        ),
        _ => (host_port.trim_matches(['[', ']']).to_owned(), 6379),
    }
}

/// Marks the current operation's last SQL statement as failed with `error`
/// (call it where a database error is turned into the operation's answer).
pub fn failed(error: &dyn std::fmt::Display) {
    tracing::event!(target: FAILED_TARGET, tracing::Level::DEBUG, error = %error);
}

/// `db.operation.name`: the statement's first keyword (`SELECT`, `INSERT`, `WITH`…).
pub fn operation_name(sql: &str) -> String {
    sql.split(|c: char| c.is_whitespace() || c == '(')
        .find(|w| !w.is_empty())
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// `db.query.text`: the statement with its whitespace folded, bounded. Our
/// statements carry their values as parameters; the one kind that writes a
/// secret literally (a role's password, at bootstrap) is withheld.
pub fn query_text(sql: &str) -> String {
    if sql.to_ascii_uppercase().contains("PASSWORD") {
        return format!("{} … (withheld: it holds a password)", operation_name(sql));
    }
    let mut out = String::with_capacity(sql.len().min(MAX_QUERY_TEXT));
    for word in sql.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.len() >= MAX_QUERY_TEXT {
            let mut cut = MAX_QUERY_TEXT;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
            break;
        }
    }
    out
}

/// What sqlx's event says about a statement.
#[derive(Default)]
struct Statement {
    summary: String,
    text: String,
    elapsed: Option<f64>,
    rows: Option<u64>,
}

impl Visit for Statement {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "summary" => self.summary = value.to_owned(),
            "db.statement" => self.text = value.to_owned(),
            _ => {}
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed = Some(value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "rows_returned" {
            self.rows = Some(value);
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

#[derive(Default)]
struct Failure(String);

impl Visit for Failure {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "error" {
            self.0 = format!("{value:?}");
        }
    }
}

/// The operation's last statement span, timed, not yet ended.
struct Pending {
    span: opentelemetry_sdk::trace::Span,
    end: SystemTime,
}

impl Pending {
    fn finish(mut self) {
        self.span.end_with_timestamp(self.end);
    }
}

/// Turns sqlx's statement events into SQL spans (see the module docs). Add it
/// with [`SqlSpans::filter`] so the events reach it whatever `RUST_LOG` says,
/// and nothing else does.
pub struct SqlSpans {
    tracer: SdkTracer,
    dispatch: OnceLock<WeakDispatch>,
}

impl SqlSpans {
    pub fn new(tracer: SdkTracer) -> Self {
        Self {
            tracer,
            dispatch: OnceLock::new(),
        }
    }

    /// What this layer reads: the statement events, and the spans they happen
    /// in (a filtered layer sees only the spans its own filter enables); nothing
    /// unless `enabled` (no spans exported: sqlx need not describe its
    /// statements). Add the layer itself unconditionally: wrapped in an
    /// `Option` it would never learn its dispatcher.
    pub fn filter(
        enabled: bool,
    ) -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
        tracing_subscriber::filter::filter_fn(move |meta| {
            let target = meta.target();
            enabled
                && ((meta.is_span() && *meta.level() <= tracing::Level::INFO)
                    || target == SQLX_TARGET
                    || target == FAILED_TARGET)
        })
    }

    fn parent(&self, id: &tracing::span::Id) -> Option<Context> {
        let dispatch = self.dispatch.get()?.upgrade()?;
        let cx = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
        cx.span().span_context().is_valid().then_some(cx)
    }
}

impl<S> Layer<S> for SqlSpans
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: layer::Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let target = event.metadata().target();
        if target == FAILED_TARGET {
            let mut failure = Failure::default();
            event.record(&mut failure);
            if let Some(mut pending) = span.extensions_mut().remove::<Pending>() {
                pending.span.set_status(Status::error(failure.0.clone()));
                pending
                    .span
                    .set_attribute(KeyValue::new("error.type", "database"));
                pending.finish();
            }
            return;
        }
        if target != SQLX_TARGET {
            return;
        }
        let mut statement = Statement::default();
        event.record(&mut statement);
        // The previous statement of this operation succeeded.
        let previous = span.extensions_mut().remove::<Pending>();
        if let Some(p) = previous {
            p.finish();
        }
        // Must not hold the span's extensions here: the bridge locks them.
        let Some(parent) = self.parent(&span.id()) else {
            return;
        };
        let sql = if statement.text.trim().is_empty() {
            statement.summary.trim_end_matches(" …").to_owned()
        } else {
            statement.text
        };
        let end = SystemTime::now();
        let elapsed = Duration::from_secs_f64(statement.elapsed.unwrap_or(0.0).max(0.0));
        let operation = operation_name(&sql);
        let mut attributes = vec![
            KeyValue::new("db.system.name", "postgresql"),
            KeyValue::new("db.system", "postgresql"),
            KeyValue::new("db.operation.name", operation.clone()),
            KeyValue::new("db.query.text", query_text(&sql)),
        ];
        if let Some((host, port)) = POSTGRES_SERVER.get() {
            attributes.push(KeyValue::new("server.address", host.clone()));
            attributes.push(KeyValue::new("server.port", i64::from(*port)));
        }
        if let Some(rows) = statement.rows {
            attributes.push(KeyValue::new(
                "db.response.returned_rows",
                i64::try_from(rows).unwrap_or(i64::MAX),
            ));
        }
        let name: Cow<'static, str> = if operation.is_empty() {
            "postgresql".into()
        } else {
            format!("{operation} postgresql").into()
        };
        let otel_span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_start_time(end.checked_sub(elapsed).unwrap_or(end))
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        span.extensions_mut().insert(Pending {
            span: otel_span,
            end,
        });
    }

    fn on_close(&self, id: tracing::span::Id, ctx: layer::Context<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && let Some(pending) = span.extensions_mut().remove::<Pending>()
        {
            pending.finish();
        }
    }
}

/// Runs one Redis command (`operation`: `GET`, `MGET`, `EVALSHA`, a pipeline's
/// `INCRBY EXPIRE`…) in a client span; an error marks the span.
pub async fn redis<T, E: std::fmt::Display>(
    operation: &'static str,
    command: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    // Only as part of a traced operation: a bare command is not a trace.
    if tracing::Span::current().is_none() {
        return command.await;
    }
    let (host, port) = REDIS_SERVER
        .get()
        .map_or(("", 0), |(h, p)| (h.as_str(), *p));
    let span = tracing::info_span!(
        "redis",
        otel.name = %format_args!("{operation} redis"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
        db.system.name = "redis",
        db.system = "redis",
        db.operation.name = operation,
        server.address = host,
        server.port = port,
        error.type = tracing::field::Empty,
    );
    let out = command.instrument(span.clone()).await;
    if let Err(e) = &out {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_message", tracing::field::display(e));
        span.record("error.type", "redis");
    }
    out
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::testing::Collected;

    /// What sqlx emits after a statement (only if its level is enabled).
    fn statement(sql: &str, secs: f64) {
        if !tracing::enabled!(target: "sqlx::query", tracing::Level::DEBUG) {
            return;
        }
        tracing::event!(
            target: "sqlx::query",
            tracing::Level::DEBUG,
            summary = sql,
            db.statement = "",
            rows_affected = 0u64,
            rows_returned = 1u64,
            elapsed_secs = secs,
        );
    }

    #[test]
    fn statements_become_timed_children_and_the_failed_one_says_so() {
        let spans = Collected::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("test"))
                    .with_filter(tracing_subscriber::EnvFilter::new("info")),
            )
            .with(SqlSpans::new(provider.tracer("sqlx")).with_filter(SqlSpans::filter(true)))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_filter(tracing_subscriber::EnvFilter::new("info")),
            );
        set_postgres_server("db.example", 5433);
        // The global default, as in the services (scoped dispatchers differ).
        tracing::subscriber::set_global_default(subscriber).unwrap();
        statement("SELECT outside", 0.001); // no operation: not traced
        tracing::info_span!("grpc.server").in_scope(|| {
            statement("SELECT 1", 0.002);
            statement("UPDATE t SET a = $1", 0.003);
            failed(&"deadlock detected");
        });
        let _ = provider.shutdown();
        let spans = spans.0.lock().unwrap().clone();
        let server = spans.iter().find(|s| s.name == "grpc.server").unwrap();
        let sql: Vec<_> = spans.iter().filter(|s| s.name != "grpc.server").collect();
        assert_eq!(sql.len(), 2, "{sql:#?}");
        let attr = |s: &SpanData, k: &str| {
            s.attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        for s in &sql {
            assert_eq!(s.parent_span_id, server.span_context.span_id());
            assert_eq!(s.span_context.trace_id(), server.span_context.trace_id());
            assert_eq!(s.span_kind, SpanKind::Client);
            assert_eq!(attr(s, "db.system.name").as_deref(), Some("postgresql"));
            assert_eq!(attr(s, "server.address").as_deref(), Some("db.example"));
            assert_eq!(attr(s, "server.port").as_deref(), Some("5433"));
        }
        let select = sql.iter().find(|s| s.name == "SELECT postgresql").unwrap();
        let update = sql.iter().find(|s| s.name == "UPDATE postgresql").unwrap();
        assert_eq!(
            attr(update, "db.query.text").as_deref(),
            Some("UPDATE t SET a = $1")
        );
        let took = select.end_time.duration_since(select.start_time).unwrap();
        assert!(
            (took.as_secs_f64() - 0.002).abs() < 1e-4,
            "timed by sqlx: {took:?}"
        );
        assert_eq!(select.status, Status::Unset);
        assert_eq!(
            update.status,
            Status::error("deadlock detected"),
            "the statement before the failure failed"
        );
    }

    #[test]
    fn statements_are_named_by_their_first_keyword_and_folded() {
        assert_eq!(operation_name("  select 1"), "SELECT");
        assert_eq!(
            operation_name("WITH x AS (SELECT 1) SELECT * FROM x"),
            "WITH"
        );
        assert_eq!(operation_name("(SELECT 1)"), "SELECT");
        assert_eq!(operation_name(""), "");
        assert_eq!(
            query_text("SELECT *\n   FROM orders\n  WHERE id = $1"),
            "SELECT * FROM orders WHERE id = $1"
        );
        assert_eq!(
            redis_server("redis://:secret@redis.exchange:6380/0"),
            ("redis.exchange".into(), 6380)
        );
        assert_eq!(
            redis_server("redis://127.0.0.1"),
            ("127.0.0.1".into(), 6379)
        );
        assert_eq!(
            redis_server("rediss://u:p@[::1]:7000"),
            ("::1".into(), 7000)
        );
        assert_eq!(
            query_text("CREATE ROLE orders LOGIN PASSWORD 'secret'"),
            "CREATE … (withheld: it holds a password)"
        );
        let long = format!("SELECT {}", "é".repeat(3000));
        let cut = query_text(&long);
        assert!(cut.len() <= MAX_QUERY_TEXT + '…'.len_utf8() && cut.ends_with('…'));
    }
}
