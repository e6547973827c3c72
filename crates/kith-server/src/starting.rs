//! The listener from the moment it is bound. Opening a data directory replays the journal (and
//! `kith serve --demo` first loads a world), which can take a while; a connection that waited
//! unanswered meanwhile would look like a hung server to a health probe or a browser. Here
//! `/healthz` answers at once, and every other path `503 starting` with `Retry-After`, until the
//! server's routes take over.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::connections::ConnectionLimits;
use crate::errors::{ApiError, ErrorCode};

/// A bound listener being served: by the start-up answers, then by the server's routes.
pub struct Listening {
    routes: Arc<OnceLock<Router>>,
    stop: watch::Sender<bool>,
    serving: JoinHandle<std::io::Result<()>>,
    local_addr: SocketAddr,
}

impl Listening {
    /// Starts answering on `listener`, in the current Tokio runtime, each connection held to
    /// `limits`.
    pub fn begin(
        listener: std::net::TcpListener,
        limits: ConnectionLimits,
    ) -> std::io::Result<Listening> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let local_addr = listener.local_addr()?;
        let routes: Arc<OnceLock<Router>> = Arc::default();
        let (stop, stopped) = watch::channel(false);
        let front = Router::new().fallback(dispatch).with_state(Arc::new(Front {
            routes: routes.clone(),
            starting: starting_answers(),
        }));
        let serving = tokio::spawn(crate::connections::serve(listener, front, limits, stopped));
        Ok(Listening {
            routes,
            stop,
            serving,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// From now on, requests go to `router`.
    pub fn route_to(&self, router: Router) {
        let _ = self.routes.set(router);
    }

    /// Stops accepting, lets the requests in progress finish (for at most
    /// [`crate::connections::SHUTDOWN_GRACE`]), and returns.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.stop.send(true);
        match self.serving.await {
            Ok(served) => served,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Who answers a request: the server's routes once they are installed, the start-up answers
/// until then. Shared behind an `Arc`, so each request takes one reference, not a copy.
struct Front {
    routes: Arc<OnceLock<Router>>,
    starting: Router,
}

async fn dispatch(State(front): State<Arc<Front>>, request: Request) -> Response {
    let router = front.routes.get().unwrap_or(&front.starting).clone();
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// What answers while the server starts, with the server's CORS headers: a browser SDK then
/// sees the 503 and its `Retry-After` and retries, where a CORS error would tell it nothing.
fn starting_answers() -> Router {
    Router::new()
        .fallback(|request: Request| async move {
            // Alive, if not ready: a liveness probe must not kill a server that is replaying.
            if request.uri().path() == "/healthz" {
                return axum::Json(json!({"status": "ok", "starting": true})).into_response();
            }
            ApiError::new(
                ErrorCode::Starting,
                "Kith is starting: it is replaying its journal (or loading the demo world) and \
                 answers once that is done; retry after `Retry-After` seconds",
            )
            .into_response()
        })
        .layer(crate::app::cors())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `method path` with `headers` (each a `name: value` line); returns the status, the
    /// answer's head and its body.
    async fn send(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &str,
    ) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let status = answer[9..12].parse().unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        (status, head.to_string(), body.to_string())
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, Option<String>, String) {
        let (status, head, body) = send(addr, "GET", path, "").await;
        let retry_after = head
            .lines()
            .find_map(|l| l.strip_prefix("retry-after: "))
            .map(str::to_string);
        (status, retry_after, body)
    }

    #[tokio::test]
    async fn the_listener_answers_while_starting_then_hands_over_to_the_routes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listening =
            Listening::begin(listener, crate::connections::ConnectionLimits::default()).unwrap();
        let addr = listening.local_addr();

        let (status, _, body) = get(addr, "/healthz").await;
        assert_eq!(
            (status, body.contains("\"starting\":true")),
            (200, true),
            "{body}"
        );
        let (status, retry_after, body) = get(addr, "/readyz").await;
        assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{body}");
        assert!(body.contains("\"code\":\"starting\""), "{body}");
        // A browser's preflight and its call, while starting: the 503 reaches the page's code.
        let origin = "Origin: https://tienda.mx\r\n";
        let (status, head, _) = send(
            addr,
            "OPTIONS",
            "/v1/batch",
            &format!("{origin}Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\n"),
        )
        .await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("access-control-allow-origin: *"), "{head}");
        let (status, head, _) = send(addr, "POST", "/v1/batch", origin).await;
        assert_eq!(status, 503, "{head}");
        assert!(head.contains("access-control-allow-origin: *"), "{head}");

        listening
            .route_to(Router::new().route("/readyz", axum::routing::get(|| async { "ready" })));
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ready"));
        listening.stop().await.unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
