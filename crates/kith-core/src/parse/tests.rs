use super::*;
use crate::Event;
use chrono::TimeZone;
use proptest::prelude::*;
use serde_json::Map;
use serde_json::json;

fn received() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
}

fn judge_batch(body: &str) -> IngestBatch {
    parse_batch_request(body)
        .expect("envelope parses")
        .normalize("web", received())
}

#[test]
fn batch_context_and_integrations_merge_into_each_item_without_overriding() {
    let body = json!({
        "batch": [
            {"type": "track", "event": "Signed Up", "userId": "u1", "messageId": "m1",
             "context": {"ip": "1.2.3.4"}},
            {"type": "identify", "userId": "u1", "messageId": "m2", "traits": {"email": "a@b.co"},
             "context": {"library": {"name": "mine"}}}
        ],
        "context": {"library": {"name": "analytics-python", "version": "2.3.2"}},
        "integrations": {"All": true},
        "writeKey": "wk"
    })
    .to_string();
    let request = parse_batch_request(&body).unwrap();
    assert_eq!(request.write_key.as_deref(), Some("wk"));
    let outcome = request.normalize("web", received());
    assert!(outcome.rejections.is_empty());
    let [track, identify] = &outcome.events[..] else {
        panic!("two events expected")
    };
    assert_eq!(track.kind, MessageType::Track);
    assert_eq!(track.event.as_deref(), Some("Signed Up"));
    let context = Event::json_object(&track.context).unwrap();
    assert_eq!(context["ip"], "1.2.3.4");
    assert_eq!(context["library"]["name"], "analytics-python");
    assert_eq!(
        Event::json_object(&identify.context).unwrap()["library"]["name"],
        "mine",
        "the item's own context wins"
    );
    assert_eq!(
        Event::json_object(&track.integrations).unwrap()["All"],
        true
    );
    assert_eq!(identify.typed.email.as_deref(), Some("a@b.co"));
}

#[test]
fn each_invalid_event_is_rejected_with_its_reason_and_neighbours_survive() {
    let big = "x".repeat(MAX_EVENT_BYTES);
    let body = json!({"batch": [
        {"type": "track", "event": "Ok", "userId": "u1", "messageId": "good-1"},
        {"type": "track", "event": "No one", "messageId": "bad-1"},
        {"type": "track", "userId": "u2", "messageId": "bad-2"},
        {"type": "track", "event": "Big", "userId": "u3", "messageId": "bad-3", "properties": {"blob": big}},
        {"type": "track", "event": 5, "userId": "u4", "messageId": "bad-4"},
        {"type": "track", "event": "Late", "userId": "u5", "messageId": "bad-5", "timestamp": "yesterday"},
        {"type": "jump", "userId": "u6", "messageId": "bad-6"},
        {"event": "untyped", "userId": "u7", "messageId": "bad-7"},
        "not an object",
        {"type": "track", "event": "Props", "userId": "u8", "messageId": "bad-9", "properties": [1]},
        {"type": "group", "userId": "u9", "messageId": "bad-10"},
        {"type": "alias", "userId": "u9", "messageId": "bad-11"},
        {"type": "page", "anonymousId": "a1", "messageId": "good-2", "name": "Home"},
        {"type": "track", "event": "Id", "userId": "u1", "messageId": "x".repeat(100)}
    ]})
    .to_string();
    let outcome = judge_batch(&body);
    let accepted: Vec<_> = outcome
        .events
        .iter()
        .map(|e| e.message_id.as_str())
        .collect();
    assert_eq!(accepted, ["good-1", "good-2"]);
    let reasons: Vec<_> = outcome
        .rejections
        .iter()
        .map(|r| {
            (
                r.index,
                r.code.as_str(),
                r.field.as_deref(),
                r.message_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (1, "missing_identity", Some("userId"), Some("bad-1")),
            (2, "missing_event", Some("event"), Some("bad-2")),
            (3, "event_too_large", None, Some("bad-3")),
            (4, "wrong_type", Some("event"), Some("bad-4")),
            (5, "invalid_timestamp", Some("timestamp"), Some("bad-5")),
            (6, "invalid_type", Some("type"), Some("bad-6")),
            (7, "missing_type", Some("type"), Some("bad-7")),
            (8, "invalid_event", None, None),
            (9, "wrong_type", Some("properties"), Some("bad-9")),
            (10, "missing_group_id", Some("groupId"), Some("bad-10")),
            (
                11,
                "missing_previous_id",
                Some("previousId"),
                Some("bad-11")
            ),
            (
                13,
                "invalid_message_id",
                Some("messageId"),
                Some("x".repeat(100).as_str())
            ),
        ]
    );
    let too_big = &outcome.rejections[2];
    assert!(too_big.raw.len() <= MAX_EVENT_BYTES);
    assert_eq!(outcome.rejections[7].raw, "\"not an object\"");
    assert!(
        outcome.rejections[4]
            .message
            .contains("`timestamp` value `yesterday` is not an ISO-8601 date-time")
    );
}

/// Python's `json` (and so Segment's and RudderStack's Python SDKs) writes float('nan') and
/// float('inf') as `NaN` and `Infinity`, which JSON does not allow: the event holding one is
/// refused on its own, kept as sent, and its neighbours are stored as if it were not there.
#[test]
fn an_event_holding_nan_or_infinity_is_refused_alone_and_its_neighbours_are_stored() {
    let good = |n: u32| {
        format!(
            r#"{{"type": "track", "event": "Good", "userId": "u{n}", "messageId": "good-{n}", "properties": {{"text": "NaN, \"Infinity\"", "n": {n}}}}}"#
        )
    };
    let bad = r#"{"type": "track", "event": "Bad", "userId": "u", "messageId": "bad", "properties": {"score" : NaN, "list": [Infinity, -Infinity]}}"#;
    let body = format!(
        r#"{{"batch": [{}, {bad}, {}], "context": {{"library": {{"name": "analytics-python"}}}}, "writeKey": "wk"}}"#,
        good(1),
        good(2)
    );
    let request = parse_batch_request(&body).expect("the envelope is read");
    assert_eq!(request.write_key.as_deref(), Some("wk"));
    let outcome = request.normalize("web", received());
    let [rejection] = &outcome.rejections[..] else {
        panic!("one rejection: {:?}", outcome.rejections)
    };
    assert_eq!(rejection.index, 1);
    assert_eq!(rejection.code, "invalid_json");
    assert_eq!(rejection.message_id.as_deref(), Some("bad"));
    assert_eq!(rejection.raw, bad, "kept as it was sent");
    assert!(
        rejection
            .message
            .starts_with("`score` is `NaN`: JSON has no NaN or infinity"),
        "{}",
        rejection.message
    );
    assert!(
        rejection.message.contains("send null"),
        "{}",
        rejection.message
    );

    // The neighbours are the events the same batch without the bad one gives.
    let without = format!(
        r#"{{"batch": [{}, {}], "context": {{"library": {{"name": "analytics-python"}}}}}}"#,
        good(1),
        good(2)
    );
    assert_eq!(outcome.events, judge_batch(&without).events);
    assert_eq!(outcome.events.len(), 2);

    // Kept as sent also with `\u` escapes (Python's `json` writes every accent so), and an
    // event that is nothing but such a value is kept whole.
    let body = r#"{"batch": [{"type": "track", "event": "Caf\u00e9", "userId": "u", "properties": {"x": NaN}}, NaN]}"#;
    let outcome = parse_batch_request(body)
        .unwrap()
        .normalize("web", received());
    let kept: Vec<&str> = outcome.rejections.iter().map(|r| r.raw.as_str()).collect();
    assert_eq!(
        kept,
        [
            r#"{"type": "track", "event": "Caf\u00e9", "userId": "u", "properties": {"x": NaN}}"#,
            "NaN"
        ]
    );
    // One holding a writeKey is not kept: the key is a secret.
    let body = r#"{"batch": [{"type": "track", "event": "E", "userId": "u", "writeKey": "secret", "p": NaN}]}"#;
    let outcome = parse_batch_request(body)
        .unwrap()
        .normalize("web", received());
    assert!(
        !outcome.rejections[0].raw.contains("secret"),
        "{}",
        outcome.rejections[0].raw
    );
    // More events than a batch may hold are refused as any such batch is.
    let many = vec!["NaN"; MAX_BATCH_EVENTS + 1].join(",");
    assert_eq!(
        parse_batch_request(&format!(r#"{{"batch": [{many}]}}"#)).err(),
        Some(RequestError::TooManyEvents(MAX_BATCH_EVENTS + 1))
    );

    // A single call holding one is that event refused.
    let single = parse_single_request(
        r#"{"userId": "u", "event": "E", "properties": {"x": -Infinity}, "writeKey": "wk"}"#,
        MessageType::Track,
    )
    .expect("the envelope is read");
    assert_eq!(single.write_key.as_deref(), Some("wk"));
    let outcome = single.normalize("web", received());
    assert!(outcome.events.is_empty());
    assert_eq!(outcome.rejections[0].code, "invalid_json");
    assert!(
        outcome.rejections[0]
            .message
            .starts_with("`x` is `-Infinity`")
    );
}

#[test]
fn nan_outside_the_events_or_beside_other_faults_refuses_the_request() {
    // In the batch's context, it would be every event's.
    let err = parse_batch_request(
        r#"{"batch": [{"type": "track", "event": "E", "userId": "u"}], "context": {"x": NaN}}"#,
    )
    .err()
    .expect("refused");
    let RequestError::InvalidJson(message) = &err else {
        panic!("{err:?}")
    };
    assert!(
        message.starts_with("`NaN` at byte 77, outside the events"),
        "{message}"
    );
    // A body that is not JSON for another reason too is refused for that reason, where it is.
    for body in [
        r#"{"batch": [{"type": "track", "event": "E", "userId": "u", "p": NaN}, ]}"#,
        r#"{"batch": [{"type": "track", "event": "E", "userId": "u", "p": NaN}"#,
        r#"{"batch": [{"type": "track", "p": NaN}, {"type": "track", "userId": u5}]}"#,
    ] {
        let without_nan = body.replace("NaN", "0  ");
        assert_eq!(
            parse_batch_request(body).err(),
            parse_batch_request(&without_nan).err(),
            "{body}"
        );
        assert!(matches!(
            parse_batch_request(body),
            Err(RequestError::InvalidJson(_))
        ));
    }
    assert!(matches!(
        parse_single_request(r#"{"userId": "u", "p": NaN"#, MessageType::Track),
        Err(RequestError::InvalidJson(_))
    ));
}

/// Many names on both sides are looked up rather than compared one by one; the merge is the
/// same: the event's own values win, the batch's others are added.
#[test]
fn batch_defaults_merge_the_same_however_many_names_there_are() {
    let batch_context: serde_json::Map<String, Value> = (0..40)
        .map(|i| (format!("k{i}"), json!(format!("batch-{i}"))))
        .collect();
    let own_context: serde_json::Map<String, Value> = (20..60)
        .map(|i| (format!("k{i}"), json!(format!("own-{i}"))))
        .collect();
    let body =
        json!({"batch": [{"type": "track", "event": "E", "userId": "u", "context": own_context}],
                      "context": batch_context})
        .to_string();
    let outcome = judge_batch(&body);
    let context: serde_json::Map<String, Value> =
        serde_json::from_str(outcome.events[0].context.as_deref().unwrap()).unwrap();
    assert_eq!(context.len(), 60);
    for i in 0..60 {
        let expected = if i < 20 {
            format!("batch-{i}")
        } else {
            format!("own-{i}")
        };
        assert_eq!(context[&format!("k{i}")], json!(expected), "k{i}");
    }
}

/// The batch's `context` and `integrations` reach each event as sent: their numbers keep every
/// digit, their keys their order, and values `serde_json` cannot hold are kept, not refused.
#[test]
fn batch_level_objects_are_merged_as_sent() {
    let body = r#"{"context": {"library": {"name": "py"}, "big": 12345678901234567890123,
                                "e": 1E2, "x": 1e400, "s": "\ud800", "dup": 1, "dup": 2},
                   "integrations": {"n": 123456789012345678901},
                   "batch": [{"type": "track", "event": "E", "userId": "u", "messageId": "m",
                              "context": {"ip": "1.2.3.4"}},
                             {"type": "track", "event": "E", "userId": "u", "messageId": "n"}]}"#;
    let outcome = judge_batch(body);
    assert!(outcome.rejections.is_empty(), "{:?}", outcome.rejections);
    let fields = r#""library":{"name": "py"},"big":12345678901234567890123,"e":1E2,"x":1e400,"s":"\ud800","dup":2"#;
    assert_eq!(
        outcome.events[0].context.as_deref(),
        Some(format!(r#"{{"ip": "1.2.3.4",{fields}}}"#).as_str())
    );
    assert_eq!(
        outcome.events[1].context.as_deref(),
        Some(format!("{{{fields}}}").as_str())
    );
    assert_eq!(
        outcome.events[1].integrations.as_deref(),
        Some(r#"{"n":123456789012345678901}"#)
    );
    assert_eq!(outcome.events[1].typed.library_name.as_deref(), Some("py"));
    // A name that is no text cannot be merged by name: the request says so.
    let body =
        r#"{"context": {"\ud800": 1}, "batch": [{"type": "track", "event": "E", "userId": "u"}]}"#;
    assert!(matches!(
        parse_batch_request(body),
        Err(RequestError::BatchFieldType {
            field: "context",
            ..
        })
    ));
}

/// An event without a `messageId` is identified by what is stored of it: the batch's `context`
/// and `integrations` count, so batches that differ there are different events, while a retry
/// of the same batch is the same event.
#[test]
fn generated_ids_count_what_the_batch_merges_in() {
    let id = |envelope: &str| {
        let body = format!(
            r#"{{{envelope}"batch": [{{"type": "page", "userId": "u", "name": "Product"}}]}}"#
        );
        let outcome = judge_batch(&body);
        outcome.events[0].message_id.clone()
    };
    let plain = id("");
    // The id such an event had before batch objects counted (computed at b56bbd5): a retry
    // sent across the upgrade is still a duplicate.
    assert_eq!(plain, "kith-b127cfe22297c2aa8b8d70d8c59a9868");
    // Nothing merged in: the id it had before batch objects counted.
    assert_eq!(id(r#""context": {}, "#), plain);
    assert_eq!(id(r#""context": null, "integrations": {}, "#), plain);
    let shop_a = id(r#""context": {"page": {"url": "https://shop/a"}}, "#);
    let shop_b = id(r#""context": {"page": {"url": "https://shop/b"}}, "#);
    assert_ne!(shop_a, plain);
    assert_ne!(shop_a, shop_b);
    assert_eq!(
        id(r#""context": {"page": {"url": "https://shop/a"}}, "#),
        shop_a
    );
    let integrations = id(r#""integrations": {"page": {"url": "https://shop/a"}}, "#);
    assert_ne!(integrations, shop_a, "the same text in another object");
}

/// A batch's `context` and `integrations` become part of every event: one larger than an event
/// may be is refused (a 300 KB context in 2,500 events stored 750 MB from one 500 KB request).
#[test]
fn batch_level_objects_larger_than_an_event_are_refused() {
    let batch = |field: &str, size: usize| {
        json!({"batch": [{"type": "track", "event": "E", "userId": "u"}], field: {"big": "x".repeat(size)}})
            .to_string()
    };
    for field in ["context", "integrations"] {
        assert!(parse_batch_request(&batch(field, MAX_EVENT_BYTES - 100)).is_ok());
        let refused = parse_batch_request(&batch(field, MAX_EVENT_BYTES)).err();
        let Some(RequestError::BatchFieldTooLarge { field: named, size }) = refused else {
            panic!("{refused:?}")
        };
        assert_eq!((named, size), (field, MAX_EVENT_BYTES + 10));
        assert!(
            RequestError::BatchFieldTooLarge { field: named, size }
                .to_string()
                .contains("merged into every event, which may be at most 32 KB")
        );
    }
}

#[test]
fn request_level_errors_are_specific() {
    assert!(matches!(
        parse_batch_request("{\"batch\": [").err(),
        Some(RequestError::InvalidJson(_))
    ));
    assert_eq!(
        parse_batch_request("[1,2]").err(),
        Some(RequestError::NotAnObject("an array"))
    );
    assert_eq!(
        parse_batch_request("{\"events\": []}").err(),
        Some(RequestError::MissingBatch)
    );
    for (batch, found) in [
        ("{\"a\": [1, {\"b\": 2}]}", "an object"),
        ("\"events\"", "a string"),
        ("true", "a boolean"),
        ("-3", "a number"),
        ("7", "a number"),
        ("2.5", "a number"),
    ] {
        assert_eq!(
            parse_batch_request(&format!("{{\"batch\": {batch}, \"sentAt\": null}}")).err(),
            Some(RequestError::BatchNotArray(found)),
            "{batch}"
        );
    }
    assert_eq!(
        parse_batch_request("{\"batch\": null}").err(),
        Some(RequestError::MissingBatch)
    );
    assert!(matches!(
        parse_batch_request("{\"batch\": [{\"a\": 1}, {\"b\": ]}").err(),
        Some(RequestError::InvalidJson(_))
    ));
    assert_eq!(
        parse_batch_request("{\"batch\": []}").map(|r| r.len()),
        Ok(0)
    );
    let too_many = json!({"batch": vec![json!({}); MAX_BATCH_EVENTS + 1]}).to_string();
    assert_eq!(
        parse_batch_request(&too_many).err(),
        Some(RequestError::TooManyEvents(MAX_BATCH_EVENTS + 1))
    );
    assert!(matches!(
        parse_single_request("", MessageType::Track).err(),
        Some(RequestError::InvalidJson(_))
    ));
}

#[test]
fn the_path_decides_the_type_of_a_single_call() {
    let body = r#"{"userId": 42, "event": "Clicked", "type": "identify", "writeKey": "wk"}"#;
    let request = parse_single_request(body, MessageType::Track).unwrap();
    assert_eq!(request.write_key.as_deref(), Some("wk"));
    let outcome = request.normalize("web", received());
    let event = &outcome.events[0];
    assert_eq!(event.kind, MessageType::Track);
    assert_eq!(
        event.user_id.as_deref(),
        Some("42"),
        "numeric ids become strings"
    );
    assert!(event.message_id.starts_with("kith-"));
    // The same body again gets the same generated id, so a retry deduplicates.
    let again = parse_single_request(body, MessageType::Track)
        .unwrap()
        .normalize("web", received());
    assert_eq!(again.events[0].message_id, event.message_id);
    // The same body sent to another path is another call.
    let page = parse_single_request(body, MessageType::Page)
        .unwrap()
        .normalize("web", received());
    assert_ne!(page.events[0].message_id, event.message_id);
}

#[test]
fn times_follow_the_segment_rules() {
    let body = json!({
        "batch": [
            {"type": "track", "event": "A", "userId": "u", "messageId": "1",
             "originalTimestamp": "2024-05-01T12:50:00Z", "sentAt": "2024-05-01T13:00:00Z"},
            {"type": "track", "event": "B", "userId": "u", "messageId": "2",
             "timestamp": "2024-04-30T08:00:00+02:00"},
            {"type": "track", "event": "C", "userId": "u", "messageId": "3",
             "originalTimestamp": "2024-05-01T12:50:00Z"},
            {"type": "track", "event": "D", "userId": "u", "messageId": "4",
             "timestamp": "2024-05-01T11:50:00Z", "originalTimestamp": "2024-05-01T12:50:00Z"}
        ],
        "sentAt": "2024-05-01T13:00:00Z"
    })
    .to_string();
    let outcome = judge_batch(&body);
    let times: Vec<_> = outcome
        .events
        .iter()
        .map(|e| e.timestamp.to_rfc3339())
        .collect();
    assert_eq!(
        times,
        [
            // the device clock ran an hour fast when it sent (sentAt 13:00, received 12:00)
            "2024-05-01T11:50:00+00:00",
            // `timestamp` as SDKs send it is the device's time, corrected the same way
            "2024-04-30T05:00:00+00:00",
            // the batch-level sentAt (analytics-python puts it there) applies to each item
            "2024-05-01T11:50:00+00:00",
            // with `originalTimestamp` beside it, `timestamp` was corrected by the sender
            "2024-05-01T11:50:00+00:00"
        ]
    );
    // Segment keeps the device's time as the original.
    assert_eq!(
        outcome.events[1].original_timestamp.map(|t| t.to_rfc3339()),
        Some("2024-04-30T06:00:00+00:00".into())
    );
    assert!(outcome.events.iter().all(|e| e.received_at == received()));
}

/// An empty time says what null says, in an event as in the batch: the event is kept, without it.
#[test]
fn an_empty_time_is_no_time() {
    let body = json!({
        "batch": [
            {"type": "track", "event": "A", "userId": "u", "messageId": "1",
             "originalTimestamp": "2024-05-01T12:50:00Z", "sentAt": ""},
            {"type": "track", "event": "B", "userId": "u", "messageId": "2",
             "timestamp": " ", "originalTimestamp": ""}
        ],
        "sentAt": "  "
    })
    .to_string();
    let outcome = judge_batch(&body);
    assert!(outcome.rejections.is_empty(), "{:?}", outcome.rejections);
    assert_eq!(outcome.events[0].sent_at, None);
    assert_eq!(
        outcome.events[0].timestamp.to_rfc3339(),
        "2024-05-01T12:50:00+00:00",
        "no sentAt, no correction"
    );
    assert_eq!(outcome.events[1].original_timestamp, None);
    assert_eq!(
        outcome.events[1].timestamp,
        received(),
        "no time: when it was received"
    );
}

#[test]
fn unknown_top_level_fields_are_kept() {
    let body = r#"{"anonymousId": "a", "name": "Docs", "category": "Help", "version": 2}"#;
    let outcome = parse_single_request(body, MessageType::Page)
        .unwrap()
        .normalize("web", received());
    let event = &outcome.events[0];
    assert_eq!(event.event.as_deref(), Some("Docs"));
    let extra = Event::json_object(&event.extra).unwrap();
    assert_eq!(extra["category"], "Help");
    assert_eq!(extra["version"], 2);

    // RudderStack's `"event": null` outside track calls says nothing and is not kept; an
    // `event` with a value is the client's data and is.
    let body = json!({"batch": [
        {"type": "page", "anonymousId": "a", "name": "Home", "event": null, "channel": "web"},
        {"type": "identify", "anonymousId": "a", "event": null},
        {"type": "identify", "anonymousId": "a", "event": "Signed Up"}
    ]})
    .to_string();
    let outcome = judge_batch(&body);
    let extras: Vec<Option<&str>> = outcome.events.iter().map(|e| e.extra.as_deref()).collect();
    assert_eq!(
        extras,
        vec![
            Some(r#"{"channel":"web"}"#),
            None,
            Some(r#"{"event":"Signed Up"}"#)
        ]
    );
}

#[test]
fn an_identify_with_only_context_traits_has_them_as_its_traits() {
    let body = json!({"batch": [
        // RudderStack's SDKs: the identify's traits in context.traits only.
        {"type": "identify", "userId": "u1", "messageId": "rs",
         "context": {"traits": {"email": "ana@tienda.mx", "plan": "pro"}, "library": {"name": "x"}}},
        // Segment's: at the top (context.traits, when present, stays in context).
        {"type": "identify", "userId": "u1", "messageId": "seg", "traits": {"plan": "basic"},
         "context": {"traits": {"plan": "pro"}}},
        // Other calls carry context.traits as context, not as their own traits.
        {"type": "track", "userId": "u1", "event": "Paid", "messageId": "track",
         "context": {"traits": {"plan": "pro"}}},
        {"type": "identify", "userId": "u1", "messageId": "none", "context": {"traits": "text"}}
    ]})
    .to_string();
    let outcome = judge_batch(&body);
    let traits: Vec<Option<serde_json::Value>> = outcome
        .events
        .iter()
        .map(|e| {
            e.traits
                .as_deref()
                .map(|t| serde_json::from_str(t).unwrap())
        })
        .collect();
    assert_eq!(
        traits,
        vec![
            Some(json!({"email": "ana@tienda.mx", "plan": "pro"})),
            Some(json!({"plan": "basic"})),
            None,
            None
        ]
    );
    let rudderstack = &outcome.events[0];
    assert_eq!(
        Event::json_object(&rudderstack.context).unwrap()["traits"]["plan"],
        "pro",
        "context keeps them as sent"
    );
    assert_eq!(rudderstack.typed.email.as_deref(), Some("ana@tienda.mx"));
}

#[test]
fn typed_fields_are_lifted() {
    let body = json!({"batch": [
        {"type": "track", "event": "Order Completed", "userId": "u", "messageId": "1",
         "properties": {"revenue": "19.90", "currency": "MXN", "order_id": 77},
         "context": {"page": {"url": "https://shop.mx/checkout", "path": "/checkout"},
                     "traits": {"email": "ana@example.com"}}},
        {"type": "track", "event": "Refund", "userId": "u", "messageId": "2",
         "properties": {"revenue": "NaN"}}
    ]})
    .to_string();
    let outcome = judge_batch(&body);
    let typed = &outcome.events[0].typed;
    assert_eq!(typed.revenue, Some(19.9));
    assert_eq!(typed.currency.as_deref(), Some("MXN"));
    assert_eq!(typed.order_id.as_deref(), Some("77"));
    assert_eq!(typed.page_url.as_deref(), Some("https://shop.mx/checkout"));
    assert_eq!(typed.page_path.as_deref(), Some("/checkout"));
    assert_eq!(typed.email.as_deref(), Some("ana@example.com"));
    assert_eq!(outcome.events[1].typed.revenue, None, "NaN is not revenue");
}

#[test]
fn total_stands_in_only_for_a_revenue_not_given() {
    let orders = [
        (json!({"revenue": "$12.00", "total": 99}), None),
        (json!({"revenue": "1,234.50", "total": 99}), None),
        (json!({"revenue": true, "total": 99}), None),
        (json!({"revenue": "inf", "total": 99}), None),
        (json!({"revenue": [1], "total": 99}), None),
        (json!({"revenue": 0, "total": 99}), Some(0.0)),
        (json!({"total": 99}), Some(99.0)),
        (json!({"revenue": null, "total": 99}), Some(99.0)),
        (json!({"revenue": " ", "total": "99.5"}), Some(99.5)),
    ];
    for (properties, expected) in orders {
        let body = json!({"batch": [{"type": "track", "event": "Order Completed", "userId": "u",
                                      "messageId": "1", "properties": properties}]})
        .to_string();
        let outcome = judge_batch(&body);
        assert_eq!(outcome.events[0].typed.revenue, expected, "{properties}");
    }
}

#[test]
fn a_group_calls_traits_are_the_groups_and_give_no_email() {
    let body = json!({"batch": [
        {"type": "group", "groupId": "acme", "userId": "u", "messageId": "1",
         "traits": {"name": "Acme", "email": "billing@acme.mx"}},
        {"type": "group", "groupId": "acme", "userId": "u", "messageId": "2",
         "traits": {"email": "billing@acme.mx"}, "context": {"traits": {"email": "ana@example.com"}}},
        {"type": "identify", "userId": "u", "messageId": "3", "traits": {"email": "ana@example.com"}}
    ]})
    .to_string();
    let emails: Vec<Option<String>> = judge_batch(&body)
        .events
        .into_iter()
        .map(|event| event.typed.email)
        .collect();
    assert_eq!(
        emails,
        [
            None,
            Some("ana@example.com".into()),
            Some("ana@example.com".into())
        ]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(request) = parse_batch_request(&text) {
            let outcome = request.normalize("web", received());
            prop_assert_eq!(outcome.events.len() + outcome.rejections.len(), request.len());
        }
        if let Ok(request) = parse_single_request(&text, MessageType::Track) {
            let outcome = request.normalize("web", received());
            prop_assert_eq!(outcome.events.len() + outcome.rejections.len(), 1);
        }
    }

    #[test]
    fn arbitrary_json_events_never_panic(
        keys in proptest::collection::vec(
            prop_oneof![
                Just("type"), Just("userId"), Just("anonymousId"), Just("event"), Just("messageId"),
                Just("timestamp"), Just("sentAt"), Just("originalTimestamp"), Just("properties"),
                Just("context"), Just("traits"), Just("groupId"), Just("previousId"), Just("name")
            ],
            0..8),
        values in proptest::collection::vec(
            prop_oneof![
                Just(json!(null)), Just(json!("track")), Just(json!("")), Just(json!(1.5)),
                Just(json!({})), Just(json!([])), Just(json!("2024-01-01T00:00:00Z")),
                Just(json!("9999-99-99")), Just(json!(true)), "\\PC{0,20}".prop_map(|s| json!(s))
            ],
            8)
    ) {
        let mut item = Map::new();
        for (key, value) in keys.iter().zip(values) {
            item.insert(key.to_string(), value);
        }
        let body = json!({"batch": [item]}).to_string();
        let outcome = judge_batch(&body);
        prop_assert_eq!(outcome.events.len() + outcome.rejections.len(), 1);
    }
}

#[test]
fn an_event_encoded_by_reference_has_the_bytes_of_its_stored_record() {
    let body = json!({"batch": [
        {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m1",
         "properties": {"revenue": 12.5, "currency": "MXN"}, "context": {"ip": "1.2.3.4"}},
        {"type": "page", "anonymousId": "a1", "messageId": "m2", "name": "Home",
         "properties": {"url": "https://kith.example/"}, "category": "top"}
    ]})
    .to_string();
    let outcome = judge_batch(&body);
    assert_eq!(outcome.events.len(), 2);
    for event in &outcome.events {
        let by_reference = crate::Stored::encode_event(event);
        assert_eq!(by_reference, crate::Stored::Event(event.clone()).encode());
        let crate::Stored::Event(decoded) = crate::Stored::decode(&by_reference).unwrap() else {
            panic!("an event record decodes as an event")
        };
        assert_eq!(decoded.message_id, event.message_id);
        assert_eq!(decoded.properties, event.properties);
    }
}

#[test]
fn properties_nested_too_deep_are_refused_for_their_depth() {
    // Not an object, and too deep to say what it is instead.
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let body = format!(
        r#"{{"batch": [{{"type": "track", "event": "Deep", "userId": "u1", "messageId": "deep-1", "properties": {deep}}},
                       {{"type": "track", "event": "Fine", "userId": "u1", "messageId": "fine-1"}}]}}"#
    );
    let outcome = judge_batch(&body);
    assert_eq!(outcome.events.len(), 1, "the valid neighbour is kept");
    assert_eq!(
        outcome.rejections[0].message,
        "`properties` must be an object, found JSON nested deeper than the 128 levels Kith reads"
    );
}

// The write key is a secret: a rejected event is kept as sent, but without it, however its
// name is written, and the rest of its text unchanged.
#[test]
fn a_rejected_event_is_kept_without_its_write_key() {
    let body = r#"{"writeKey": "kith_ingest_secret", "userId": "u", "properties": {"n": 1.50, "é": "\u00e9"}, "messageId": "m1"}"#;
    let outcome = parse_single_request(body, MessageType::Track)
        .unwrap()
        .normalize("web", received());
    assert_eq!(outcome.rejections[0].code, "missing_event");
    assert_eq!(
        outcome.rejections[0].raw,
        r#"{"userId":"u","properties":{"n": 1.50, "é": "\u00e9"},"messageId":"m1"}"#
    );
    let escaped = r#"{"write\u004bey": "kith_ingest_secret", "userId": "u"}"#;
    let outcome = parse_single_request(escaped, MessageType::Track)
        .unwrap()
        .normalize("web", received());
    assert_eq!(outcome.rejections[0].raw, r#"{"userId":"u"}"#);
    // Without one, the text is kept exactly as it came.
    let plain = r#"{ "userId" : "u" }"#;
    let outcome = parse_single_request(plain, MessageType::Track)
        .unwrap()
        .normalize("web", received());
    assert_eq!(outcome.rejections[0].raw, plain);
    // In a batch, and through `judge_event` (files), the same.
    let outcome = judge_batch(
        r#"{"batch": [{"type": "track", "userId": "u", "writeKey": "kith_ingest_secret"}]}"#,
    );
    assert_eq!(
        outcome.rejections[0].raw,
        r#"{"type":"track","userId":"u"}"#
    );
    let rejection = judge_event(
        r#"{"type": "track", "userId": "u", "writeKey": "kith_ingest_secret"}"#,
        "file",
        received(),
    )
    .unwrap_err();
    assert!(!rejection.raw.contains("secret"), "{}", rejection.raw);
    // Text that cannot be read as an object (a name with half a UTF-16 pair; a file line that
    // is not JSON) is not kept when it may hold the key.
    let unreadable = judge_batch(
        r#"{"batch": [{"writeKey": "kith_ingest_secret", "\udead": 1, "type": "track", "userId": "u"}]}"#,
    );
    assert!(
        !unreadable.rejections[0].raw.contains("secret"),
        "{}",
        unreadable.rejections[0].raw
    );
    let line =
        judge_event(r#"{"writeKey": "kith_ingest_secret", "#, "file", received()).unwrap_err();
    assert!(!line.raw.contains("secret"), "{}", line.raw);
}

// A time the query engine cannot work on (before 1900 or after 2189: see
// `crate::time::is_storable`) would make date queries over the whole table fail: such an event is rejected, naming the field, and its neighbours
// are stored.
#[test]
fn times_outside_the_storable_years_are_rejected_by_field() {
    let outcome = judge_batch(
        &json!({"batch": [
            {"type": "track", "userId": "u", "event": "A", "timestamp": "0001-01-01T00:00:00Z"},
            {"type": "track", "userId": "u", "event": "B", "originalTimestamp": "0000-01-01T00:00:00+23:59"},
            {"type": "track", "userId": "u", "event": "C", "sentAt": "9999-12-31T00:00:00Z"},
            {"type": "track", "userId": "u", "event": "D", "originalTimestamp": "1900-01-02T00:00:00Z",
             "sentAt": "2189-12-30T00:00:00Z"},
            {"type": "track", "userId": "u", "event": "E", "timestamp": "1900-01-01T00:00:00Z"},
            {"type": "track", "userId": "u", "event": "F", "timestamp": "1700-01-01T00:00:00Z"}
        ]})
        .to_string(),
    );
    let fields: Vec<(usize, &str, Option<&str>)> = outcome
        .rejections
        .iter()
        .map(|r| (r.index, r.code.as_str(), r.field.as_deref()))
        .collect();
    assert_eq!(
        fields,
        [
            (0, "invalid_timestamp", Some("timestamp")),
            (1, "invalid_timestamp", Some("originalTimestamp")),
            (2, "invalid_timestamp", Some("sentAt")),
            (3, "invalid_timestamp", Some("sentAt")),
            (5, "invalid_timestamp", Some("timestamp")),
        ]
    );
    assert_eq!(
        outcome.rejections[0].message,
        "`timestamp` value `0001-01-01T00:00:00Z` is outside the years 1900–2189 that Kith can \
         store and query (a default value such as Go's zero time, or a clock far off?); send the \
         time the event happened, or leave `timestamp` out"
    );
    assert!(
        outcome.rejections[3].message.starts_with(
            "correcting the device clock by `sentAt` − `originalTimestamp` puts the event at 1734-"
        ),
        "{}",
        outcome.rejections[3].message
    );
    assert_eq!(outcome.events.len(), 1);
    assert_eq!(outcome.events[0].event.as_deref(), Some("E"));
    let batch_sent_at = judge_batch(
        r#"{"sentAt": "0001-01-01T00:00:00Z", "batch": [{"type": "track", "userId": "u", "event": "A"}]}"#,
    );
    assert_eq!(batch_sent_at.rejections[0].field.as_deref(), Some("sentAt"));
}

// A batch-level field every event takes on is refused when its type is wrong, rather than
// dropped from every event without a word.
#[test]
fn batch_level_fields_of_the_wrong_type_are_refused_by_name() {
    let events = r#""batch": [{"type": "track", "userId": "u", "event": "A"}]"#;
    for (field, value, message) in [
        (
            "context",
            r#""str""#,
            "the batch's `context` must be an object (it is merged into each event), found a string",
        ),
        (
            "integrations",
            "[1]",
            "the batch's `integrations` must be an object (it is merged into each event), found an array",
        ),
        (
            "sentAt",
            "5",
            "the batch's `sentAt` must be an ISO-8601 string (the time the batch was sent, which \
             corrects each event's device clock), found a number",
        ),
    ] {
        let body = format!(r#"{{{events}, "{field}": {value}}}"#);
        let error = parse_batch_request(&body).err().unwrap();
        assert_eq!(error.to_string(), message);
    }
    // Null is as good as absent.
    let body = format!(r#"{{{events}, "context": null, "integrations": null, "sentAt": null}}"#);
    assert_eq!(judge_batch(&body).events.len(), 1);
}

// Half a UTF-16 surrogate pair is well-formed JSON but no text: the event is refused with that
// reason (not "must be a string"), its neighbours kept.
#[test]
fn a_lone_surrogate_in_an_id_is_named_as_such() {
    let outcome = judge_batch(
        r#"{"batch": [{"type": "track", "userId": "u\ud800", "event": "A"},
                      {"type": "track", "userId": "u", "event": "B"}]}"#,
    );
    assert_eq!(outcome.events.len(), 1);
    let rejection = &outcome.rejections[0];
    assert_eq!(
        (rejection.code.as_str(), rejection.field.as_deref()),
        ("invalid_text", Some("userId"))
    );
    assert!(
        rejection
            .message
            .starts_with("`userId` holds an escape that is no character"),
        "{}",
        rejection.message
    );
}

#[test]
fn what_the_parser_accepts_is_storable_and_an_event_built_elsewhere_is_checked_by_field() {
    let outcome = judge_batch(
        &json!({"batch": [{"type": "track", "event": "Paid", "userId": "u1", "messageId": "m1",
            "properties": {"revenue": 3}, "context": {"ip": "1.2.3.4"}, "custom": 1}]})
        .to_string(),
    );
    let [event] = &outcome.events[..] else {
        panic!("one event expected: {outcome:?}")
    };
    assert_eq!(event.unstorable(), None);
    let problem = |change: &dyn Fn(&mut Event)| {
        let mut changed = event.clone();
        change(&mut changed);
        changed.unstorable().unwrap_or_default()
    };
    let year_one = Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap();
    assert!(problem(&|e| e.timestamp = year_one).starts_with("`timestamp` (0001-01-01"));
    assert!(problem(&|e| e.sent_at = Some(year_one)).starts_with("`sent_at`"));
    assert!(problem(&|e| e.received_at = year_one).starts_with("`received_at`"));
    assert_eq!(
        problem(&|e| e.properties = Some("[1]".into())),
        "`properties` is not the text of a JSON object"
    );
    assert_eq!(
        problem(&|e| e.extra = Some("{".into())),
        "`extra` is not the text of a JSON object"
    );
    assert!(problem(&|e| e.message_id.clear()).starts_with("`message_id` must have 1 to 99"));
    assert!(problem(&|e| e.message_id = "x".repeat(100)).ends_with("it has 100"));
    assert_eq!(
        problem(&|e| e.event = None),
        "a track event needs `event`, its name"
    );
    assert_eq!(problem(&|e| e.source.clear()), "`source` is empty");
}

// A line of a file was received by a server long before it is read: its device clock is
// corrected against the `receivedAt` that server recorded, and without one it is not corrected
// (against the time of reading, a year-old event would land today).
#[test]
fn file_lines_are_corrected_against_their_recorded_arrival_not_the_time_of_reading() {
    let read_now = received();
    let recorded = judge_event(
        r#"{"type": "track", "event": "A", "userId": "u", "timestamp": "2023-03-01T10:50:00Z",
            "sentAt": "2023-03-01T11:00:00Z", "receivedAt": "2023-03-01T10:00:00Z"}"#,
        "file",
        read_now,
    )
    .unwrap();
    assert_eq!(recorded.timestamp.to_rfc3339(), "2023-03-01T09:50:00+00:00");
    assert_eq!(recorded.received_at, read_now);
    let unrecorded = judge_event(
        r#"{"type": "track", "event": "A", "userId": "u", "originalTimestamp": "2023-03-01T10:50:00Z",
            "sentAt": "2023-03-01T11:00:00Z"}"#,
        "file",
        read_now,
    )
    .unwrap();
    assert_eq!(
        unrecorded.timestamp.to_rfc3339(),
        "2023-03-01T10:50:00+00:00"
    );
    // Without any time of its own, it happened when it was received: then, not now.
    let received_then = judge_event(
        r#"{"type": "track", "event": "A", "userId": "u", "receivedAt": "2023-03-01T10:00:00Z"}"#,
        "file",
        read_now,
    )
    .unwrap();
    assert_eq!(
        received_then.timestamp.to_rfc3339(),
        "2023-03-01T10:00:00+00:00"
    );
}

// A profile's history calls a merge whose message id has the manual-merge prefix "manual": no
// client may claim one, or anyone with a (public, browser) write key could forge the record of
// a merge a person confirmed.
#[test]
fn the_manual_merge_message_id_prefix_is_refused_from_clients() {
    let outcome = judge_batch(
        &json!({"batch": [
            {"type": "track", "userId": "u", "anonymousId": "a", "event": "Login",
             "messageId": "kith-merge-forged"},
            {"type": "track", "userId": "u", "event": "Login", "messageId": "not-kith-merge-x"}
        ]})
        .to_string(),
    );
    assert_eq!(outcome.events.len(), 1);
    let rejection = &outcome.rejections[0];
    assert_eq!(
        (
            rejection.code.as_str(),
            rejection.field.as_deref(),
            rejection.message_id.as_deref()
        ),
        (
            "invalid_message_id",
            Some("messageId"),
            Some("kith-merge-forged")
        )
    );
    assert!(
        rejection
            .message
            .contains("reserved for merges confirmed in Kith")
    );
    let mut event = outcome.events[0].clone();
    event.message_id = "kith-merge-forged".into();
    assert!(event.unstorable().is_some_and(|p| p.contains("reserved")));
}

// JSON allows values `serde_json` cannot hold (`1e400`, half a surrogate pair, deep nesting) and
// fields named twice. Such an event is accepted, so none of them may cost it anything else: not
// its own `context` when the batch has one, nor the typed columns beside the odd value.
#[test]
fn odd_values_cost_only_themselves() {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let body = format!(
        r#"{{"context": {{"library": {{"name": "batchlib"}}}}, "integrations": {{"Mixpanel": true}},
            "batch": [
            {{"type": "track", "event": "E", "userId": "u", "messageId": "big",
              "context": {{"page": {{"url": "https://a.mx/x"}}, "traits": {{"email": "a@ex.com"}}, "n": 1e400}}}},
            {{"type": "track", "event": "E", "userId": "u", "messageId": "half",
              "context": {{"page": {{"url": "https://a.mx/y"}}, "campaign": {{"name": "\ud800"}}}}}},
            {{"type": "track", "event": "E", "userId": "u", "messageId": "deep",
              "context": {{"page": {{"url": "https://a.mx/z"}}, "d": {deep}}},
              "integrations": {{"All": false, "x": 1e400}}}},
            {{"type": "track", "event": "Order Completed", "userId": "u", "messageId": "twice",
              "properties": {{"revenue": 1, "currency": "USD", "revenue": 2, "currency": "MXN", "n": 1e400}}}},
            {{"type": "track", "event": "Order Completed", "userId": "u", "messageId": "huge",
              "properties": {{"revenue": 1e400, "currency": "MXN"}}}}
        ]}}"#
    );
    let outcome = judge_batch(&body);
    assert!(outcome.rejections.is_empty(), "{:?}", outcome.rejections);
    let event = |id: &str| {
        outcome
            .events
            .iter()
            .find(|e| e.message_id == id)
            .unwrap_or_else(|| panic!("{id}"))
    };
    for (id, url) in [
        ("big", "https://a.mx/x"),
        ("half", "https://a.mx/y"),
        ("deep", "https://a.mx/z"),
    ] {
        let e = event(id);
        let context = e.context.as_deref().unwrap();
        // The event's own context, as sent, with the batch's `library` added, as sent too.
        assert!(context.contains(url), "{id}: {context}");
        assert!(
            context.ends_with(r#","library":{"name": "batchlib"}}"#),
            "{id}: {context}"
        );
        assert_eq!(e.typed.page_url.as_deref(), Some(url), "{id}");
        assert_eq!(e.typed.library_name.as_deref(), Some("batchlib"), "{id}");
    }
    assert_eq!(event("big").typed.email.as_deref(), Some("a@ex.com"));
    // The event's own `integrations` decide; the batch's fill in what it lacks.
    let integrations = event("deep").integrations.as_deref().unwrap();
    assert!(
        integrations.starts_with(r#"{"All": false, "x": 1e400"#)
            && integrations.ends_with(r#","Mixpanel":true}"#),
        "{integrations}"
    );
    // A field named twice is its last value; an unreadable neighbour costs nothing.
    let twice = &event("twice").typed;
    assert_eq!(
        (twice.revenue, twice.currency.as_deref()),
        (Some(2.0), Some("MXN"))
    );
    let huge = &event("huge").typed;
    assert_eq!(
        (huge.revenue, huge.currency.as_deref()),
        (None, Some("MXN"))
    );
}

/// The codes events are refused with are the ones `REJECTION_CODES` lists (which start the
/// metric's series) and docs/errors.md explains: a code added to one and not the others fails.
#[test]
fn every_rejection_code_is_listed_and_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut used = std::collections::BTreeSet::new();
    for file in ["src/parse.rs", "src/event.rs"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        // Faults, and the refusals `judge_event` makes itself (`rejection("invalid_json", …)`).
        for call in ["Fault::new(", "rejection("] {
            for (at, _) in text.match_indices(call) {
                let rest = text[at + call.len()..].trim_start();
                if let Some(code) = rest
                    .strip_prefix('"')
                    .and_then(|rest| rest.split('"').next())
                {
                    used.insert(code.to_string());
                }
            }
        }
    }
    let listed: std::collections::BTreeSet<String> =
        REJECTION_CODES.iter().map(|c| c.to_string()).collect();
    assert_eq!(used, listed);
    let docs = std::fs::read_to_string(root.join("../../docs/errors.md")).unwrap();
    let section = docs
        .split("## Per-event rejection codes")
        .nth(1)
        .expect("docs/errors.md has its per-event section");
    for code in REJECTION_CODES {
        assert!(
            section.contains(&format!("`{code}`")),
            "{code} is not in docs/errors.md"
        );
    }
}
