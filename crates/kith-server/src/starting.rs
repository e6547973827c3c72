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

use crate::errors::{ApiError, ErrorCode};

/// A bound listener being served: by the start-up answers, then by the server's routes.
pub struct Listening {
    routes: Arc<OnceLock<Router>>,
    stop: watch::Sender<bool>,
    serving: JoinHandle<std::io::Result<()>>,
    local_addr: SocketAddr,
}

impl Listening {
    /// Starts answering on `listener`, in the current Tokio runtime.
    pub fn begin(listener: std::net::TcpListener) -> std::io::Result<Listening> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let local_addr = listener.local_addr()?;
        let routes: Arc<OnceLock<Router>> = Arc::default();
        let (stop, mut stopped) = watch::channel(false);
        let front = Router::new().fallback(dispatch).with_state(routes.clone());
        let serving = tokio::spawn(async move {
            // With each connection's address, for `context.ip` when the server records it.
            axum::serve(
                listener,
                front.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stopped.changed().await;
            })
            .await
        });
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

    /// Stops accepting, lets the requests in progress finish, and returns.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.stop.send(true);
        match self.serving.await {
            Ok(served) => served,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

async fn dispatch(State(routes): State<Arc<OnceLock<Router>>>, request: Request) -> Response {
    match routes.get() {
        Some(router) => match router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        // Alive, if not ready: a liveness probe must not kill a server that is replaying.
        None if request.uri().path() == "/healthz" => {
            axum::Json(json!({"status": "ok", "starting": true})).into_response()
        }
        None => ApiError::new(
            ErrorCode::Starting,
            "Kith is starting: it is replaying its journal (or loading the demo world) and \
             answers once that is done; retry after `Retry-After` seconds",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> (u16, Option<String>, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let status = answer[9..12].parse().unwrap();
        let retry_after = answer
            .lines()
            .find_map(|l| l.strip_prefix("retry-after: "))
            .map(str::to_string);
        let body = answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        (status, retry_after, body)
    }

    #[tokio::test]
    async fn the_listener_answers_while_starting_then_hands_over_to_the_routes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listening = Listening::begin(listener).unwrap();
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

        listening
            .route_to(Router::new().route("/readyz", axum::routing::get(|| async { "ready" })));
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ready"));
        listening.stop().await.unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
