//! Tracking pixels, as email and AMP pages load them: Segment's (`/v1/pixel/{call}?data=…`) and
//! RudderStack's (`/pixel/v1/{track,page}?writeKey=…&…`), over HTTP to the real binary on loopback.

mod common;

use base64::Engine;
use common::*;
use serde_json::{Map, Value, json};

fn object(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

/// Asserts a pixel answer: 200, a GIF, not to be cached.
fn assert_gif(answer: (u16, String, String, Vec<u8>)) {
    let (status, content_type, cache_control, body) = answer;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, "image/gif");
    assert!(cache_control.contains("no-store"), "{cache_control}");
    assert!(body.starts_with(b"GIF89a"), "{body:?}");
}

#[test]
fn segment_pixels_take_the_event_as_base64_data_or_as_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let key = server.write_key.clone();
    let pixel = |path: &str| get_raw(&server.url(path), &[]);
    let data = |event: Value| base64::engine::general_purpose::STANDARD.encode(event.to_string());
    let percent = |text: &str| {
        text.replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    };

    // The example of Segment's documentation: an email's open, loaded twice: two opens.
    let open = data(
        json!({"writeKey": key, "userId": "ana", "event": "Email Opened",
                           "properties": {"subject": "Las ofertas >>> de noviembre", "email": "ana@example.com"}}),
    );
    // The second load went through an email tool that added a cache-buster and its campaign
    // parameters: Segment reads only `data`, and so does Kith.
    assert_gif(pixel(&format!("/v1/pixel/track?data={}", percent(&open))));
    assert_gif(pixel(&format!(
        "/v1/pixel/track?data={}&cb=8271&_=1764979200&utm_source=newsletter",
        percent(&open)
    )));
    // URL-safe base64 without padding, with a messageId, loaded twice: stored once.
    let identify = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        json!({"writeKey": key, "userId": "ana", "messageId": "identify-1",
               "traits": {"email": "ana@example.com", "plan": "pro"}})
        .to_string(),
    );
    for _ in 0..2 {
        assert_gif(pixel(&format!("/v1/pixel/identify?data={identify}")));
    }
    // Unencoded: one parameter a field.
    assert_gif(pixel(&format!(
        "/v1/pixel/page?writeKey={key}&userId=ana&name=Inicio&properties.url=https%3A%2F%2Ftienda.mx%2F"
    )));

    let opens = server.rows(
        "SELECT user_id, email, json_get_str(properties, 'subject') AS subject FROM events \
         WHERE event = 'Email Opened'",
    );
    let expected = object(json!({"user_id": "ana", "email": "ana@example.com",
                                 "subject": "Las ofertas >>> de noviembre"}));
    assert_eq!(opens, vec![expected.clone(), expected]);
    let identifies = server.rows(
        "SELECT message_id, email, json_get_str(traits, 'plan') AS plan FROM events WHERE type = 'identify'",
    );
    assert_eq!(
        identifies,
        vec![object(
            json!({"message_id": "identify-1", "email": "ana@example.com", "plan": "pro"})
        )]
    );
    // The key that came inside `data` is not kept with the event.
    assert_eq!(
        server.rows("SELECT count(*) AS n FROM events WHERE extra LIKE '%writeKey%' OR context LIKE '%kith_ingest%'")[0]["n"],
        0
    );
    let pages = server.rows("SELECT event, page_url FROM events WHERE type = 'page'");
    assert_eq!(
        pages,
        vec![object(
            json!({"event": "Inicio", "page_url": "https://tienda.mx/"})
        )]
    );

    // What cannot be stored is explained.
    let refused = |path: &str| {
        let (status, _, _, body) = pixel(path);
        let answer = json_of(&body);
        (
            status,
            answer["code"].as_str().unwrap_or_default().to_string(),
            answer["message"].to_string(),
        )
    };
    let (status, code, message) = refused(&format!(
        "/v1/pixel/track?data={}&userId=ana",
        percent(&open)
    ));
    assert_eq!((status, code.as_str()), (400, "invalid_parameter"));
    assert!(message.contains("`userId` beside it"), "{message}");
    let (status, code, message) = refused(&format!(
        "/v1/pixel/track?data={}&properties.plan=pro",
        percent(&open)
    ));
    assert_eq!((status, code.as_str()), (400, "invalid_parameter"));
    assert!(message.contains("`properties.plan` beside it"), "{message}");
    let (status, code, _) = refused("/v1/pixel/track?data=%3F%3F%3F");
    assert_eq!((status, code.as_str()), (400, "invalid_parameter"));
    let (status, code, message) = refused("/v1/pixel/order?data=e30");
    assert_eq!((status, code.as_str()), (404, "not_found"));
    assert!(message.contains("pixel/order"), "{message}");
    let (status, code, _) = refused(&format!(
        "/v1/pixel/track?data={}",
        data(json!({"writeKey": key, "userId": "ana", "messageId": "no-event"}))
    ));
    assert_eq!((status, code.as_str()), (400, "invalid_event"));
    assert_eq!(
        server.rows("SELECT message_id, code FROM rejected_events"),
        vec![object(
            json!({"message_id": "no-event", "code": "missing_event"})
        )]
    );
    let (status, code, _) = refused(&format!(
        "/v1/pixel/track?data={}",
        data(json!({"writeKey": "not-a-key", "userId": "ana", "event": "A"}))
    ));
    assert_eq!((status, code.as_str()), (401, "invalid_api_key"));
    assert_eq!(
        server.rows("SELECT count(*) AS n FROM events")[0]["n"],
        4,
        "refused pixels stored nothing"
    );

    // A HEAD (a link checker, a mail scanner) is answered as a load, and opens nothing.
    let looked = agent()
        .head(server.url(&format!("/v1/pixel/track?data={}", percent(&open))))
        .call()
        .unwrap();
    assert_eq!(
        (
            looked.status().as_u16(),
            looked.headers()["content-type"].to_str().unwrap()
        ),
        (200, "image/gif")
    );
    // base64 as the `base64` tool writes it, wrapped in lines.
    let wrapped: String = data(json!({"writeKey": key, "userId": "ana", "event": "Wrapped",
                                      "messageId": "wrapped-1"}))
    .as_bytes()
    .chunks(20)
    .map(|line| percent(std::str::from_utf8(line).unwrap()))
    .collect::<Vec<_>>()
    .join("%0A");
    assert_gif(pixel(&format!("/v1/pixel/track?data={wrapped}")));
    assert_eq!(
        server.rows("SELECT message_id FROM events WHERE event IN ('Email Opened', 'Wrapped') ORDER BY message_id DESC LIMIT 1"),
        vec![object(json!({"message_id": "wrapped-1"}))]
    );
    assert_eq!(server.rows("SELECT count(*) AS n FROM events")[0]["n"], 5);
    // The parameters ignored beside `data` are counted: the cache-buster load's three.
    let (_, _, _, metrics) = pixel("/metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("kith_pixel_parameters_ignored_total 3"),
        "{metrics}"
    );
}

#[test]
fn rudderstack_pixels_store_an_event_built_from_the_query_and_answer_with_a_gif() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let key = server.write_key.clone();
    let pixel = |path: &str| get_raw(&server.url(path), &[]);

    // An email's open pixel, loaded twice: two opens.
    let open = format!(
        "/pixel/v1/track?writeKey={key}&event=Email%20Opened&anonymousId=%22anon-9%22\
         &properties.campaign=buen-fin&context.campaign.source=email"
    );
    for _ in 0..2 {
        let (status, content_type, cache_control, body) = pixel(&open);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(content_type, "image/gif");
        assert!(cache_control.contains("no-store"), "{cache_control}");
        assert!(body.starts_with(b"GIF89a"), "{body:?}");
    }
    // A page pixel with its own messageId, loaded twice: stored once.
    let page = format!(
        "/pixel/v1/page?writeKey={key}&userId=u-1&name=Inicio&messageId=page-1\
         &properties.url=https%3A%2F%2Ftienda.mx%2F"
    );
    for _ in 0..2 {
        let (status, content_type, _, _) = pixel(&page);
        assert_eq!((status, content_type.as_str()), (200, "image/gif"));
    }

    let opens = server.rows(
        "SELECT type, event, anonymous_id, source, json_get_str(properties, 'campaign') AS campaign, \
         json_get_str(context, 'campaign', 'source') AS campaign_source \
         FROM events WHERE event = 'Email Opened'",
    );
    assert_eq!(opens.len(), 2, "{opens:#?}");
    for open in &opens {
        assert_eq!(
            Value::Object(open.clone()),
            json!({"type": "track", "event": "Email Opened", "anonymous_id": "anon-9",
                   "source": "web", "campaign": "buen-fin", "campaign_source": "email"})
        );
    }
    let pages = server
        .rows("SELECT message_id, type, event, user_id, page_url FROM events WHERE type = 'page'");
    assert_eq!(
        pages,
        vec![
            json!({"message_id": "page-1", "type": "page", "event": "Inicio", "user_id": "u-1",
                   "page_url": "https://tienda.mx/"})
            .as_object()
            .unwrap()
            .clone()
        ]
    );

    // What cannot be stored is explained, in JSON, and a refused event is kept with its reason.
    let (status, _, _, body) = pixel(&format!(
        "/pixel/v1/track?writeKey={key}&userId=u-1&messageId=no-event"
    ));
    let answer = json_of(&body);
    assert_eq!(
        (status, &answer["code"]),
        (400, &json!("invalid_event")),
        "{answer}"
    );
    let rejected = server.rows("SELECT message_id, code FROM rejected_events");
    assert_eq!(
        rejected,
        vec![
            json!({"message_id": "no-event", "code": "missing_event"})
                .as_object()
                .unwrap()
                .clone()
        ]
    );
    let (status, _, _, body) = pixel(&format!(
        "/pixel/v1/track?writeKey={key}&event=A&userId=u-1&properties=x&properties.plan=pro"
    ));
    let answer = json_of(&body);
    assert_eq!(
        (status, &answer["code"]),
        (400, &json!("invalid_parameter"))
    );
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("`properties.plan`"),
        "{answer}"
    );
    // A `+` typed into the URL as it is arrives as a space: the message says so.
    let (status, _, _, body) = pixel(&format!(
        "/pixel/v1/track?writeKey={key}&event=A&userId=u-1&timestamp=2026-12-06T10:00:00+01:00"
    ));
    let answer = json_of(&body);
    assert_eq!((status, &answer["code"]), (400, &json!("invalid_event")));
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("send it as %2B"),
        "{answer}"
    );
    let (status, _, _, body) = pixel("/pixel/v1/track?event=A&userId=u-1");
    assert_eq!(
        (status, &json_of(&body)["code"]),
        (401, &json!("missing_api_key"))
    );
    let events = server.rows("SELECT count(*) AS n FROM events");
    assert_eq!(events[0]["n"], 3, "refused pixels stored nothing");
}
