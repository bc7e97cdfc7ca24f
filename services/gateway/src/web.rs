//! The web page (`/`): static assets embedded in the binary, served with
//! cache headers and a Content-Security-Policy that allows nothing from
//! outside this origin.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Scripts, styles and connections from this origin only; no framing. Inline
/// styles are allowed: the chart library sets style attributes as it draws
/// (styles cannot run code; scripts stay 'self' only).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

const INDEX: &str = include_str!("../web/index.html");

/// `(path under /assets/, content type, bytes)`.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../web/app.css"),
    ),
    (
        "vendor/lightweight-charts.standalone.production.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/vendor/lightweight-charts.standalone.production.js"),
    ),
];

fn secured(mut resp: Response, cache: &'static str) -> Response {
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

pub async fn index() -> Response {
    let resp = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response();
    secured(resp, "no-cache")
}

pub async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, content_type, bytes)) => {
            let resp = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, *content_type)],
                *bytes,
            )
                .into_response();
            // Revalidated after five minutes: the names carry no version.
            secured(resp, "public, max-age=300")
        }
        None => ApiError::not_found().into_response(),
    }
}
