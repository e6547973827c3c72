//! What the read and management API answers, and how long it takes: the calls beside
//! collection (queries, analyses, models, profiles, computed traits, imports) counted by route,
//! method and status (`kith_api_requests_total`) and timed to their answer's head
//! (`kith_api_request_seconds`). Collection has counters of its own, by event rather than by
//! request, and is kept out of this layer so its hot path pays nothing for it.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// Counts and times one API request. The route is the pattern it matched
/// (`/v1/analytics/{analysis}`), never the path a client sent, so a client cannot add label
/// values at will.
pub async fn record(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("kith_api_request_seconds", "route" => route.clone(), "method" => method)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("kith_api_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

/// The method as a label: one of those the API's routes use, or `other` (a client may send
/// any token as its method).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
