//! HTTP connections, end to end on the real binary: requests that are not readable HTTP get the
//! API's error body, and connections that keep the server waiting (half a request, a kept-alive
//! connection with no next request, a body that stops) are closed, so they can never use up the
//! server's open files and shut out the clients that do send.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn track(server: &KithServer, message_id: &str) -> (u16, Value) {
    post_json(
        &server.url("/v1/track"),
        &[("Authorization", &basic(&server.write_key))],
        &json!({"userId": "u1", "event": "Visto", "messageId": message_id}).to_string(),
    )
}

fn connect(server: &KithServer) -> TcpStream {
    let stream = TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Sends `request` as it is on a connection of its own; returns the first answer's status, all
/// that came back until the connection closed, and the first answer's body as JSON.
fn send_raw(server: &KithServer, request: &[u8]) -> (u16, String, Value) {
    let mut stream = connect(server);
    // A server may answer and close before it has read all of a long request: what it did not
    // read is not this test's concern.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8(answer).unwrap();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, answer, body)
}

// Requests hyper cannot read never reach a route; hyper answers them with a bare status. Each
// still gets the API's error body saying what was wrong and how to fix it, and the server goes
// on serving the next connection.
#[test]
fn requests_that_are_not_readable_http_get_an_explained_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let counted = |status: &str| {
        metric(
            &server.base,
            &format!("kith_http_unreadable_requests_total{{status=\"{status}\"}}"),
        )
    };
    // Each status has a series from the first scrape, so an alert on its rate can fire at once.
    assert_eq!(
        (counted("400"), counted("414"), counted("431")),
        (Some(0.0), Some(0.0), Some(0.0))
    );
    let host = "Host: kith\r\nConnection: close\r\n";
    let many_headers: String = (0..150).map(|i| format!("X-Tag-{i}: {i}\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        (
            "a space in the path",
            format!("GET /v1/a b HTTP/1.1\r\n{host}\r\n").into_bytes(),
            400,
            "malformed_request",
            "request line",
        ),
        (
            "a header line without a colon",
            format!("POST /v1/batch HTTP/1.1\r\n{host}Authorization Basic abc\r\n\r\n")
                .into_bytes(),
            400,
            "malformed_request",
            "header line",
        ),
        (
            "two different lengths",
            format!(
                "POST /v1/batch HTTP/1.1\r\n{host}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}"
            )
            .into_bytes(),
            400,
            "malformed_request",
            "Content-Length",
        ),
        (
            "a pixel URL of 70,000 bytes",
            format!(
                "GET /v1/pixel/track?data={} HTTP/1.1\r\n{host}\r\n",
                "A".repeat(70_000)
            )
            .into_bytes(),
            414,
            "uri_too_long",
            "POST",
        ),
        (
            "150 headers",
            format!("GET /healthz HTTP/1.1\r\n{host}{many_headers}\r\n").into_bytes(),
            431,
            "headers_too_large",
            "100 header lines",
        ),
        (
            // Over Kith's 128 KiB, under hyper's default of 408 KiB.
            "a cookie of 140,000 bytes",
            format!(
                "GET /healthz HTTP/1.1\r\n{host}Cookie: c={}\r\n\r\n",
                "c".repeat(140_000)
            )
            .into_bytes(),
            431,
            "headers_too_large",
            "128 KiB",
        ),
        (
            "a cookie of 500,000 bytes",
            format!(
                "GET /healthz HTTP/1.1\r\n{host}Cookie: c={}\r\n\r\n",
                "c".repeat(500_000)
            )
            .into_bytes(),
            431,
            "headers_too_large",
            "cookie",
        ),
    ];
    for (what, request, status, code, names) in &cases {
        let (got, head, body) = send_raw(&server, request);
        assert_eq!(
            (got, &body["code"]),
            (*status, &json!(code)),
            "{what}: {head}"
        );
        assert_eq!(body["type"], "invalid_request", "{what}");
        assert_eq!(body["link"], format!("/docs/errors#{code}"), "{what}");
        assert!(
            body["message"].as_str().unwrap().contains(names),
            "{what}: {body}"
        );
        assert!(
            head.contains("content-type: application/json"),
            "{what}: {head}"
        );
        // A browser's SDK may read it too.
        assert!(
            head.contains("access-control-allow-origin: *"),
            "{what}: {head}"
        );
    }
    // On a connection kept alive, the request before is answered as usual.
    let (status, head, _) = send_raw(
        &server,
        b"GET /healthz HTTP/1.1\r\nHost: kith\r\n\r\nGET /a b HTTP/1.1\r\nHost: kith\r\n\r\n",
    );
    assert_eq!(status, 200, "{head}");
    let (_, after) = head.split_once("{\"status\":\"ok\"}").unwrap();
    assert!(after.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    assert!(after.contains("\"code\":\"malformed_request\""), "{head}");
    // A pixel URL as long as it may be, with 60 KB of headers beside it, is read.
    let (status, head, _) = send_raw(
        &server,
        format!(
            "GET /healthz?pad={} HTTP/1.1\r\n{host}Cookie: c={}\r\n\r\n",
            "x".repeat(65_000),
            "c".repeat(60_000)
        )
        .as_bytes(),
    );
    assert_eq!(status, 200, "{head}");
    // Readable requests, before and after, on fresh connections and on one kept alive.
    let (status, _, body) = send_raw(
        &server,
        format!("GET /healthz HTTP/1.1\r\n{host}\r\n").as_bytes(),
    );
    assert_eq!((status, &body["status"]), (200, &json!("ok")));
    let (status, _) = track(&server, "after-unreadable");
    assert_eq!(status, 200);
    assert_eq!(
        server.query("SELECT count(*) AS n FROM events")["rows"],
        json!([[1]])
    );
    assert_eq!(
        (counted("400"), counted("414"), counted("431")),
        (Some(4.0), Some(1.0), Some(3.0))
    );
}

/// A server whose process starts with a limit of `soft` open files (which it may raise to
/// `hard`), with `config` as its kith.toml.
fn start_with_open_files(dir: &std::path::Path, soft: u64, hard: u64, config: &str) -> KithServer {
    let mut command = Command::new(kith_bin());
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: between fork and exec the child only calls setrlimit, which is async-signal-safe
    // and reads `limit`, a copy moved into the closure.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    KithServer::start_command_with_config(command, dir, config).0
}

/// Reads until the server closes the connection; returns what came and how long it took.
fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("the server closes the connection");
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

// Before, a connection was held for as long as its client kept it open: with the server limited
// to 256 open files, 300 connections that each sent half a request left it accepting nothing,
// ingest included, until they went away; and while clients held every file, writing the tables
// failed too ("too many open files"). Now the server serves at most 192 connections under that
// limit, keeping the rest for storage.
#[test]
fn connections_that_keep_the_server_waiting_are_closed_and_never_shut_out_clients() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_open_files(
        dir.path(),
        256,
        256,
        "idle_connection_secs = 2\n[ingest]\nflush_interval_ms = 100\n",
    );

    // A kept-alive connection that sends no next request is closed after the idle time.
    let mut kept_alive = connect(&server);
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: kith\r\n\r\n")
        .unwrap();
    let (answer, waited) = read_until_closed(&mut kept_alive);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(20),
        "closed after {waited:?}"
    );

    // A body that stops arriving is answered 408, with the API's error body.
    let mut stopped_body = connect(&server);
    stopped_body
        .write_all(
            format!(
                "POST /v1/batch HTTP/1.1\r\nHost: kith\r\nAuthorization: {}\r\n\
                 Content-Length: 100\r\n\r\n{{\"batch\": [",
                basic(&server.write_key)
            )
            .as_bytes(),
        )
        .unwrap();
    let mut answer = [0u8; 2048];
    let read = stopped_body.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");

    // 300 connections that each send half a request's head, more than the server may hold.
    let stalled: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut stream = connect(&server);
            stream
                .write_all(b"POST /v1/batch HTTP/1.1\r\nHost: kith\r\n")
                .unwrap();
            stream
        })
        .collect();
    // A client that does send is served once they are closed.
    let started = Instant::now();
    let (status, body) = track(&server, "beside-stalled-connections");
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // The server served as many connections as its limit allows (otherwise this test shows
    // nothing) and kept the rest of its files: it never ran out of them (without the limit on
    // connections, accepting failed here), and no table write failed.
    assert!(
        metric(&server.base, "kith_http_connections_at_limit_total").unwrap_or(0.0) >= 1.0,
        "the server never reached its limit on connections"
    );
    assert_eq!(
        metric(&server.base, "kith_http_accept_errors_total"),
        Some(0.0),
        "the server ran out of open files"
    );
    assert_eq!(
        metric(&server.base, "kith_lake_flush_errors_total"),
        Some(0.0)
    );
    for mut stream in stalled {
        let (answer, _) = read_until_closed(&mut stream);
        assert_eq!(answer, "", "a stalled request is closed without an answer");
    }
    assert!(metric(&server.base, "kith_http_connections_timed_out_total").unwrap() >= 300.0);
    assert_eq!(
        server.query("SELECT message_id FROM events")["rows"],
        json!([["beside-stalled-connections"]])
    );

    // An answer read more than twice the idle time late is sent whole: the limit is on waiting
    // for the client to send, never on the server's own answer.
    let mut slow_reader = connect(&server);
    let query =
        json!({"sql": "SELECT value, repeat('x', 100) AS pad FROM generate_series(1, 50000)"})
            .to_string();
    slow_reader
        .write_all(
            format!(
                "POST /v1/query HTTP/1.1\r\nHost: kith\r\nAuthorization: Bearer {}\r\n\
                 Accept: text/csv\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{query}",
                server.read_key,
                query.len()
            )
            .as_bytes(),
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(7));
    let (answer, _) = read_until_closed(&mut slow_reader);
    assert!(
        answer.starts_with("HTTP/1.1 200 OK"),
        "{}",
        &answer[..200.min(answer.len())]
    );
    assert!(
        answer.contains(&format!("\n50000,{}", "x".repeat(100))),
        "the answer was cut short"
    );
}

/// Posts twelve events of 30 KB (each may be 32 KB at most), `{prefix}-00` to `{prefix}-11`:
/// 361 KB, which a 1 MB `max_receiving_mb` takes only once what other requests held is given
/// back.
fn post_large_batch(server: &KithServer, prefix: &str) -> (u16, Value) {
    let padding = "x".repeat(30_000);
    let events: Vec<Value> = (0..12)
        .map(|i| {
            json!({"type": "track", "userId": "u1", "event": "Grande",
                   "messageId": format!("{prefix}-{i:02}"),
                   "properties": {"padding": padding}})
        })
        .collect();
    post_json(
        &server.url("/v1/batch"),
        &[("Authorization", &basic(&server.write_key))],
        &json!({ "batch": events }).to_string(),
    )
}

// Each body is read whole before it is parsed, so without a bound the memory held grows with the
// number of clients sending at once (SDKs flushing after an outage, or slow uploads on purpose)
// until the server is killed for it. Past `max_receiving_mb` a request is answered 429 with
// `Retry-After`, and the budget comes back as bodies end.
#[test]
fn bodies_being_received_share_a_memory_budget_and_past_it_get_a_retry_later() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = KithServer::start_with_config(dir.path(), "max_receiving_mb = 1\n");
    // A body's head and the first `sent` of its `length` bytes.
    let begin_batch = |length: usize, sent: usize| {
        let mut stream = connect(&server);
        let head = format!(
            "POST /v1/batch HTTP/1.1\r\nHost: kith\r\nAuthorization: {}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
            basic(&server.write_key)
        );
        let mut request = head.into_bytes();
        request.extend(b"{\"batch\": [");
        request.resize(request.len() + sent - 11, b' ');
        stream.write_all(&request).unwrap();
        stream
    };
    // Two bodies hold 780,000 of the 1,048,576 bytes...
    let holding = [begin_batch(400_000, 390_000), begin_batch(400_000, 390_000)];
    std::thread::sleep(Duration::from_millis(1500));
    // ...so a third that passes the budget is told to come back once it has sent its body
    // (answered earlier, its client could see a reset connection instead), and the server
    // stays up.
    let mut refused = begin_batch(400_000, 400_000);
    refused
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let read = refused
        .read(&mut answer)
        .expect("an answer to the whole body");
    let answer = String::from_utf8_lossy(&answer[..read]).to_lowercase();
    assert!(answer.starts_with("http/1.1 429 "), "{answer}");
    assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer}");
    assert!(answer.contains("\"code\":\"overloaded\""), "{answer}");
    assert!(answer.contains("max_receiving_mb"), "{answer}");
    assert!(metric(&server.base, "kith_http_bodies_over_budget_total").unwrap() >= 1.0);

    // Once the two bodies end (their clients gave up), a batch of the same size is received.
    drop(holding);
    drop(refused);
    std::thread::sleep(Duration::from_millis(500));
    let (status, body) = post_large_batch(&server, "after-the-budget");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        server.query("SELECT count(*) FROM events WHERE message_id LIKE 'after-the-budget-%'")["rows"],
        json!([[12]])
    );
}

/// What a connection costs the server beyond the bodies' budget stays small however fast its
/// client sends: hyper grows a connection's read buffer with the size of its reads, and kept
/// it for as long as the connection stayed open, about 240 KB each for clients that had sent
/// 390 KB quickly, unseen by `max_receiving_mb`.
#[test]
fn connections_part_way_through_large_bodies_hold_little_beyond_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = KithServer::start_with_config(dir.path(), "max_receiving_mb = 1\n");
    let pid = server.child.id();
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: kith\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 400000\r\n\r\n",
        basic(&server.write_key)
    );
    let mut request = head.into_bytes();
    request.extend(b"{\"batch\": [");
    request.resize(request.len() + 390_000 - 11, b' ');
    // One connection first, so that what every connection shares (threads, the runtime's
    // buffers) is in place before the measure.
    let mut held = vec![connect(&server)];
    held[0].write_all(&request).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let before = process_memory_kib(pid, "VmRSS");
    const CONNECTIONS: u64 = 200;
    for _ in 0..CONNECTIONS {
        let mut stream = connect(&server);
        stream.write_all(&request).unwrap();
        held.push(stream);
    }
    // Every byte sent has been read: the server passes over what is past the budget.
    std::thread::sleep(Duration::from_millis(1500));
    let grown = process_memory_kib(pid, "VmRSS").saturating_sub(before);
    assert!(
        grown / CONNECTIONS < 120,
        "the server grew by {grown} KiB for {CONNECTIONS} connections"
    );
    assert!(metric(&server.base, "kith_http_bodies_over_budget_total").unwrap() >= 1.0);
    drop(held);
    assert_eq!(track(&server, "after-the-large-bodies").0, 200);
}

#[test]
fn connection_settings_that_cannot_work_stop_start_up_with_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kith.toml");
    let data = dir.path().join("data");
    for (setting, says) in [
        ("idle_connection_secs = 0", "would close every connection"),
        // Once overflowed the time each connection's wait ends: every connection panicked.
        ("idle_connection_secs = 18446744073709551615", "over a day"),
        ("idle_connection_secs = -1", "idle_connection_secs"),
        ("idle_connection_secs = \"1m\"", "idle_connection_secs"),
        ("max_receiving_mb = 0", "would refuse every request"),
        (
            "max_receiving_mb = 18446744073709551615",
            "more bytes than this machine",
        ),
        ("max_receiving_mb = -5", "max_receiving_mb"),
    ] {
        std::fs::write(&config, format!("{setting}\n")).unwrap();
        let (ok, _, err) = kith(&[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        assert!(!ok, "{setting}");
        assert!(err.contains(says), "{setting}: {err}");
    }
}

/// `(soft, hard)` from the "Max open files" line of `/proc/PID/limits`.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let mut fields = line.split_whitespace().skip(3);
    let soft = fields.next().unwrap().to_string();
    (soft, fields.next().unwrap().to_string())
}

// A service manager's usual soft limit (1,024) is a few hundred kept-alive clients; the hard
// limit above it is the server's to take.
#[test]
fn the_server_raises_its_open_file_limit_to_the_hard_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_open_files(dir.path(), 300, 5000, "");
    assert_eq!(
        open_file_limits(server.child.id()),
        ("5000".to_string(), "5000".to_string())
    );
}

/// One HTTP/2 frame: `(type, flags, stream, payload)`.
fn read_frame(stream: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
    next_frame(stream).expect("an HTTP/2 frame")
}

/// The next HTTP/2 frame, or `None` once the connection is closed or its read timeout passes.
fn next_frame(stream: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).ok()?;
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).ok()?;
    Some((head[3], head[4], id, payload))
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    bytes.extend([kind, flags]);
    bytes.extend(stream.to_be_bytes());
    bytes.extend(payload);
    bytes
}

/// On an HTTP/2 connection with nothing sent yet: the preface, empty settings, then
/// `GET /healthz` on stream 1. Returns the answer's first header byte (0x88 for `:status 200`,
/// entry 8 of HPACK's static table) and its body.
fn http2_health_check(stream: &mut TcpStream) -> (Option<u8>, Value) {
    let (head, body) = http2_get(stream, "/healthz");
    (head.first().copied(), body)
}

/// An HPACK integer with a `prefix`-bit prefix, the prefix's other bits `flags`.
fn hpack_integer(flags: u8, prefix: u32, value: usize, into: &mut Vec<u8>) {
    let most = (1usize << prefix) - 1;
    if value < most {
        into.push(flags | value as u8);
        return;
    }
    into.push(flags | most as u8);
    let mut rest = value - most;
    while rest >= 128 {
        into.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    into.push(rest as u8);
}

/// An HPACK literal header with a new name, not added to the table.
fn hpack_literal(name: &str, value: &str, into: &mut Vec<u8>) {
    into.push(0x00);
    hpack_integer(0, 7, name.len(), into);
    into.extend(name.as_bytes());
    hpack_integer(0, 7, value.len(), into);
    into.extend(value.as_bytes());
}

/// On an HTTP/2 connection with nothing sent yet: the preface, empty settings, then `GET path`
/// on stream 1, its headers split into frames of 16 KiB (the least frame size every peer
/// takes). Returns the answer's header block (HPACK) and its body.
fn http2_get(stream: &mut TcpStream, path: &str) -> (Vec<u8>, Value) {
    // The request's headers in HPACK, each an entry of the static table or a literal with an
    // indexed name.
    let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    request.extend(frame(0x4, 0, 0, &[]));
    let mut headers = vec![0x82, 0x86]; // :method GET, :scheme http
    headers.push(0x44); // :path, then the literal
    hpack_integer(0, 7, path.len(), &mut headers);
    headers.extend(path.as_bytes());
    headers.push(0x41); // :authority
    headers.push(4);
    headers.extend(b"kith");
    // HEADERS with END_STREAM on stream 1, then CONTINUATION frames; the last has END_HEADERS.
    let parts: Vec<&[u8]> = headers.chunks(16 << 10).collect();
    for (i, part) in parts.iter().enumerate() {
        let (kind, mut flags) = if i == 0 { (0x1, 0x1) } else { (0x9, 0) };
        if i + 1 == parts.len() {
            flags |= 0x4;
        }
        request.extend(frame(kind, flags, 1, part));
    }
    stream.write_all(&request).unwrap();
    let (mut head, mut body) = (Vec::new(), Vec::new());
    loop {
        let (kind, flags, id, payload) = read_frame(stream);
        match (kind, id) {
            (0x1, 1) => head = payload,
            (0x0, 1) => body.extend(payload),
            (0x4, 0) if flags & 0x1 == 0 => stream.write_all(&frame(0x4, 0x1, 0, &[])).unwrap(),
            // RST_STREAM, or GOAWAY: the request was refused.
            (0x3, 1) | (0x7, 0) => break,
            _ => {}
        }
        if id == 1 && flags & 0x1 != 0 {
            break;
        }
    }
    (head, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

// Proxies such as Envoy may speak HTTP/2 without TLS to the server behind them ("prior
// knowledge"), as `axum::serve` allowed; serving connections with a loop of Kith's own must not
// lose that.
#[test]
fn http2_with_prior_knowledge_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let mut stream = connect(&server);
    let (status, body) = http2_health_check(&mut stream);
    assert_eq!(status, Some(0x88), "not a 200");
    assert_eq!(body["status"], "ok");

    // HTTP/2 heads may take 16 KiB (hyper's default; a connection may hold 200 requests' heads
    // at once, and 96 KiB let one connection pin 45 MB): a 12 KB pixel URL is served, a 20 KB
    // one is refused, `:status 431`, a literal (0x48) whose three digits are Huffman-coded in
    // three bytes (RFC 7541, appendix B: 4 011010, 3 011001, 1 00001). HTTP/1 takes 64 KB URLs.
    let long = format!("/healthz?pad={}", "x".repeat(12_000));
    let (head, body) = http2_get(&mut connect(&server), &long);
    assert_eq!(head.first(), Some(&0x88), "not a 200: {head:?}");
    assert_eq!(body["status"], "ok");
    let longer = format!("/healthz?pad={}", "x".repeat(20_000));
    let (head, _) = http2_get(&mut connect(&server), &longer);
    assert!(
        head.starts_with(&[0x48, 0x83, 0x69, 0x90, 0xff]),
        "{head:?}"
    );
}

// An HTTP/2 connection may hold 200 requests at once, each head up to 16 KiB of headers: heads
// whose requests promise a body that never comes held about 9 MB a connection, unseen by
// `max_receiving_mb`. Heads now count against it, and past it are refused at once.
#[test]
fn request_heads_share_the_memory_budget_and_past_it_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = KithServer::start_with_config(dir.path(), "max_receiving_mb = 1\n");
    let mut stream = connect(&server);
    let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    request.extend(frame(0x4, 0, 0, &[]));
    // 100 heads of about 16 KB: some 64 of them fit in the 1 MiB budget.
    const STREAMS: u32 = 100;
    let padding = "p".repeat(15_000);
    for i in 0..STREAMS {
        let mut headers = vec![0x83, 0x86]; // :method POST, :scheme http
        headers.push(0x44); // :path
        headers.push(9);
        headers.extend(b"/v1/batch");
        headers.push(0x41); // :authority
        headers.push(4);
        headers.extend(b"kith");
        hpack_literal("authorization", &basic(&server.write_key), &mut headers);
        hpack_literal("content-type", "application/json", &mut headers);
        hpack_literal("content-length", "1000", &mut headers);
        hpack_literal("x-padding", &padding, &mut headers);
        // END_HEADERS and not END_STREAM: each request waits for a body that never comes.
        request.extend(frame(0x1, 0x4, 2 * i + 1, &headers));
    }
    stream.write_all(&request).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let (mut first_head, mut heads, mut bodies) = (
        None,
        std::collections::BTreeSet::new(),
        std::collections::BTreeMap::<u32, Vec<u8>>::new(),
    );
    while let Some((kind, flags, id, payload)) = next_frame(&mut stream) {
        match kind {
            0x1 => {
                first_head.get_or_insert(payload);
                heads.insert(id);
            }
            0x0 => bodies.entry(id).or_default().extend(payload),
            0x4 if flags & 0x1 == 0 => stream.write_all(&frame(0x4, 0x1, 0, &[])).unwrap(),
            _ => {}
        }
    }
    // The answers came at once (the read waits 3 s at most for each frame), with the API's
    // error body. The first is `:status 429`: a literal (0x48) whose digits are Huffman-coded
    // (RFC 7541, appendix B: 4 011010, 2 00010, 9 011111); the others refer to it.
    assert!(
        (20..=60).contains(&heads.len()),
        "{} of {STREAMS} heads answered",
        heads.len()
    );
    let first_head = first_head.unwrap();
    assert!(
        first_head.starts_with(&[0x48, 0x83, 0x68, 0x4f, 0xff]),
        "{first_head:?}"
    );
    for id in &heads {
        let body: Value = serde_json::from_slice(&bodies[id]).unwrap();
        assert_eq!(body["code"], "overloaded", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("max_receiving_mb"), "{message}");
    }
    assert_eq!(
        metric(&server.base, "kith_http_heads_over_budget_total"),
        Some(heads.len() as f64)
    );

    // Once the connection closes, the heads it held are given back: a batch of 361 KB fits.
    drop(stream);
    std::thread::sleep(Duration::from_millis(500));
    let (status, body) = post_large_batch(&server, "after-the-heads");
    assert_eq!(status, 200, "{body}");
}

// hyper's timer only starts once an HTTP/1 request's head has begun. A connection that sent
// nothing, or only the first bytes of HTTP/2's preface (read before a protocol is chosen), or
// an HTTP/2 connection between requests, was held for as long as its client kept it open; and
// browsers open connections ahead of need that they may never use.
#[test]
fn connections_that_never_begin_a_request_or_idle_on_http2_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = KithServer::start_with_config(dir.path(), "idle_connection_secs = 2\n");
    let opened = Instant::now();
    let silent = connect(&server);
    let mut preface_begun = connect(&server);
    preface_begun.write_all(b"PRI * HTTP/2").unwrap();
    let mut http2 = connect(&server);
    let (status, body) = http2_health_check(&mut http2);
    assert_eq!((status, &body["status"]), (Some(0x88), &json!("ok")));
    let answered = Instant::now();

    for (mut stream, name) in [(silent, "silent"), (preface_begun, "preface begun")] {
        let (answer, _) = read_until_closed(&mut stream);
        let closed_after = opened.elapsed();
        assert_eq!(answer, "", "{name}");
        assert!(
            closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(20),
            "{name}: closed after {closed_after:?}"
        );
    }

    // The HTTP/2 client is told to go away (GOAWAY), then the connection closes; a ping with
    // the notice is answered, as a client would.
    let mut told_to_go_away = None;
    loop {
        let mut head = [0u8; 9];
        match http2.read(&mut head[..1]) {
            Ok(0) => break,
            Ok(_) => http2.read_exact(&mut head[1..]).unwrap(),
            Err(e) => panic!("the idle HTTP/2 connection was not closed: {e}"),
        }
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; length];
        http2.read_exact(&mut payload).unwrap();
        match (head[3], head[4]) {
            (0x7, _) => told_to_go_away = told_to_go_away.or(Some(answered.elapsed())),
            (0x6, flags) if flags & 0x1 == 0 => {
                let _ = http2.write_all(&frame(0x6, 0x1, 0, &payload));
            }
            _ => {}
        }
    }
    let waited = told_to_go_away.expect("no GOAWAY before the connection closed");
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(20),
        "told to go away after {waited:?}"
    );
    assert!(metric(&server.base, "kith_http_connections_timed_out_total").unwrap() >= 3.0);
    // The server serves on.
    let (status, body) = track(&server, "after-idle-connections");
    assert_eq!(status, 200, "{body}");
}

// A client half-way through sending a request's head no longer holds the server's exit for the
// whole idle time (75 s by default): requests in progress get a few seconds to finish.
#[test]
fn a_stop_is_not_held_up_by_a_connection_still_sending_its_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let (status, body) = track(&server, "before-the-stop");
    assert_eq!(status, 200, "{body}");
    let mut stalled = connect(&server);
    stalled
        .write_all(b"POST /v1/batch HTTP/1.1\r\nHost: kith\r\n")
        .unwrap();
    // Give the server the connection before it is told to stop.
    std::thread::sleep(Duration::from_millis(300));
    let data_dir = server.data_dir.clone();
    let started = Instant::now();
    server.stop();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "the stop took {took:?}");
    assert_eq!(
        sql(&data_dir, "SELECT message_id FROM events"),
        vec![vec!["before-the-stop".to_string()]]
    );
}
