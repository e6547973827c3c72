//! What Kith stores of a generated Segment call, checked field by field against the rules written
//! out plainly here: the fidelity the hand-written parts of the parser (top-level fields read as
//! raw text, batch defaults appended to the item's own text, the lenient `context` reader, the
//! typed columns) must keep for any spelling of the same JSON — escapes, whitespace, repeated
//! names, keys in any order.

use super::*;
use crate::{Event, Stored, StoredView};
use chrono::TimeZone;
use proptest::prelude::*;
use serde_json::Map;

/// A JSON value as written, so that the same value can be spelt in many ways and an object can
/// name a key twice.
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    /// The number's literal text.
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

/// How a value is spelt: whitespace around tokens, non-ASCII as `\u` escapes (pairs beyond the
/// basic plane), `/` escaped.
#[derive(Debug, Clone, Copy)]
struct Spelling {
    spaced: bool,
    ascii_only: bool,
    slash_escaped: bool,
}

const PLAIN: Spelling = Spelling {
    spaced: false,
    ascii_only: false,
    slash_escaped: false,
};

fn write_str(out: &mut String, text: &str, how: Spelling) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if how.slash_escaped => out.push_str("\\/"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if how.ascii_only && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write(out: &mut String, value: &J, how: Spelling) {
    let gap = if how.spaced { " " } else { "" };
    match value {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(text) => out.push_str(text),
        J::Str(text) => write_str(out, text, how),
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    out.push_str(gap);
                }
                write(out, item, how);
            }
            out.push(']');
        }
        J::Obj(fields) => {
            out.push('{');
            out.push_str(gap);
            for (i, (key, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    out.push_str(gap);
                }
                write_str(out, key, how);
                out.push(':');
                out.push_str(gap);
                write(out, item, how);
            }
            out.push_str(gap);
            out.push('}');
        }
    }
}

fn spelt(value: &J, how: Spelling) -> String {
    let mut out = String::new();
    write(&mut out, value, how);
    out
}

/// What a JSON reader makes of the value: a repeated name's last value wins.
fn meaning(value: &J) -> Value {
    serde_json::from_str(&spelt(value, PLAIN)).expect("generated JSON is valid")
}

/// The value of `name` in an object, the last one written.
fn field<'a>(fields: &'a [(String, J)], name: &str) -> Option<&'a J> {
    fields.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        Just("Order Completed".to_string()),
        Just("  padded  ".to_string()),
        Just("ñandú é 漢字 😀".to_string()),
        Just("quote \" back \\ slash / tab \t nl \n ctl \u{1}".to_string()),
        Just(String::new()),
        Just("   ".to_string()),
        "\\PC{0,12}",
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (-1000i64..1000).prop_map(|n| n.to_string()),
        Just("19.9".to_string()),
        Just("0.1".to_string()),
        Just("1e3".to_string()),
        Just("-2.5E-2".to_string()),
        Just("12345678901234567890".to_string()),
    ]
}

fn scalar() -> impl Strategy<Value = J> {
    prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        number().prop_map(J::Num),
        text().prop_map(J::Str),
        // Numbers as text, as revenue sometimes arrives.
        prop_oneof![
            Just(" 19.90 "),
            Just("1e2"),
            Just("NaN"),
            Just("inf"),
            Just("12,5")
        ]
        .prop_map(|s| J::Str(s.to_string())),
    ]
}

fn any_value() -> impl Strategy<Value = J> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            proptest::collection::vec(("[a-z]{1,3}|\\PC{1,4}", inner), 0..4).prop_map(J::Obj),
        ]
    })
}

/// An object whose keys come from `names` (repeats allowed, in any order) or are the client's own.
fn object_of(names: &'static [&'static str], value: BoxedStrategy<J>) -> BoxedStrategy<J> {
    proptest::collection::vec(
        (
            prop_oneof![
                3 => proptest::sample::select(names).prop_map(str::to_string),
                1 => "[a-z]{1,4}|\\PC{1,4}",
            ],
            value,
        ),
        0..6,
    )
    .prop_map(J::Obj)
    .boxed()
}

fn maybe(value: BoxedStrategy<J>) -> BoxedStrategy<Option<J>> {
    proptest::option::weighted(0.6, value).boxed()
}

fn properties() -> BoxedStrategy<J> {
    object_of(
        &[
            "revenue", "total", "currency", "order_id", "orderId", "url", "path", "referrer",
            "email",
        ],
        prop_oneof![3 => scalar(), 1 => any_value()].boxed(),
    )
}

/// `context`: the parts Kith reads (objects or not), and the client's own.
fn context() -> BoxedStrategy<J> {
    let page = prop_oneof![
        3 => object_of(&["url", "path", "referrer"], scalar().boxed()),
        1 => scalar().boxed(),
    ];
    let traits = prop_oneof![
        3 => object_of(&["email", "plan"], scalar().boxed()),
        1 => scalar().boxed(),
    ];
    let library = prop_oneof![
        3 => object_of(&["name", "version"], scalar().boxed()),
        1 => scalar().boxed(),
    ];
    let part = prop_oneof![
        Just("page").prop_flat_map(move |k| (Just(k), page.clone())),
        Just("traits").prop_flat_map(move |k| (Just(k), traits.clone())),
        Just("library").prop_flat_map(move |k| (Just(k), library.clone())),
        (
            proptest::sample::select(&["ip", "locale", "externalIds", "campaign"][..]),
            any_value()
        ),
    ]
    .prop_map(|(k, v)| (k.to_string(), v));
    proptest::collection::vec(part, 0..6)
        .prop_map(J::Obj)
        .boxed()
}

fn identifier() -> BoxedStrategy<Option<J>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(J::Null)),
        4 => text().prop_map(|s| Some(J::Str(s))),
        1 => (-99i64..100_000).prop_map(|n| Some(J::Num(n.to_string()))),
    ]
    .boxed()
}

/// Device, send and other times, all storable, in the forms SDKs write.
fn time() -> BoxedStrategy<Option<J>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(J::Null)),
        4 => proptest::sample::select(
            &[
                "2024-05-01T11:59:00Z",
                "2024-05-01T13:00:00.250Z",
                "2024-04-30T08:00:00+02:00",
                "2024-05-01T12:00:00.123456-06:00",
                "2023-12-31T23:59:59.999Z",
            ][..]
        )
        .prop_map(|t| Some(J::Str(t.to_string()))),
    ]
    .boxed()
}

/// How a call reaches Kith.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Delivery {
    /// In a `/v1/batch` body, with the batch's defaults.
    Batch,
    /// On its own path (`/v1/track`, ...), which decides its type.
    OwnPath,
    /// As a line of an events file: its recorded `receivedAt` is when it arrived.
    FileLine,
}

#[derive(Debug, Clone)]
struct Call {
    kind: MessageType,
    delivery: Delivery,
    top: Vec<(String, J)>,
    batch_context: Option<J>,
    batch_integrations: Option<J>,
    batch_sent_at: Option<J>,
    how: Spelling,
}

fn call() -> impl Strategy<Value = Call> {
    let kinds = proptest::sample::select(&MessageType::ALL[..]);
    let fields = (
        (identifier(), identifier(), identifier(), identifier()),
        (
            proptest::option::weighted(0.8, text()),
            proptest::option::weighted(0.5, text()),
            proptest::option::weighted(0.7, "[a-zA-Z0-9-]{1,20}"),
        ),
        (
            maybe(properties()),
            maybe(object_of(&["email", "name"], scalar().boxed())),
            maybe(context()),
            maybe(object_of(&["All", "Mixpanel"], scalar().boxed())),
        ),
        (time(), time(), time()),
        // The client's own top-level fields, and a call's `event` of null.
        (
            proptest::collection::vec(
                (
                    proptest::sample::select(&["category", "_metadata", "channel", "version"][..]),
                    any_value(),
                ),
                0..3,
            ),
            any::<bool>(),
        ),
    );
    let batch = (
        maybe(context()),
        maybe(object_of(&["All", "Amplitude"], scalar().boxed())),
        time(),
        proptest::sample::select(&[Delivery::Batch, Delivery::OwnPath, Delivery::FileLine][..]),
    );
    let how = (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(s, a, e)| Spelling {
        spaced: s,
        ascii_only: a,
        slash_escaped: e,
    });
    (
        kinds,
        fields,
        batch,
        how,
        any::<u64>(),
        proptest::option::of(identifier()),
        time(),
    )
        .prop_map(
            |(kind, fields, batch, how, order, repeated_user, recorded_at)| {
                let (
                    (user, anonymous, group, previous),
                    (event, name, message_id),
                    objects,
                    times,
                    own,
                ) = fields;
                let (properties, traits, context, integrations) = objects;
                let (timestamp, original, sent_at) = times;
                let (own_fields, null_event) = own;
                let mut top: Vec<(String, J)> = Vec::new();
                let put = |top: &mut Vec<(String, J)>, name: &str, value: Option<J>| {
                    if let Some(value) = value {
                        top.push((name.to_string(), value));
                    }
                };
                put(&mut top, "type", Some(J::Str(kind.as_str().to_string())));
                put(&mut top, "userId", user);
                put(&mut top, "anonymousId", anonymous);
                put(&mut top, "groupId", group);
                put(&mut top, "previousId", previous);
                if kind == MessageType::Track {
                    put(&mut top, "event", event.map(J::Str));
                } else if null_event {
                    put(&mut top, "event", Some(J::Null));
                }
                put(&mut top, "name", name.map(J::Str));
                put(&mut top, "messageId", message_id.map(J::Str));
                put(&mut top, "properties", properties);
                put(&mut top, "traits", traits);
                put(&mut top, "context", context);
                put(&mut top, "integrations", integrations);
                put(&mut top, "timestamp", timestamp);
                put(&mut top, "originalTimestamp", original);
                put(&mut top, "sentAt", sent_at);
                put(&mut top, "writeKey", Some(J::Str("wk_secret".into())));
                // A server's own time of receipt: a file's line keeps it, a client's is ignored.
                put(&mut top, "receivedAt", recorded_at);
                for (name, value) in own_fields {
                    put(&mut top, name, Some(value));
                }
                // Keys in any order (the type need not come first), one of them at times
                // repeated: the last one written is the one that counts.
                let mut order = order;
                for i in (1..top.len()).rev() {
                    top.swap(i, (order % (i as u64 + 1)) as usize);
                    order /= i as u64 + 1;
                }
                if let Some(user) = repeated_user {
                    put(&mut top, "userId", user);
                }
                let (batch_context, batch_integrations, batch_sent_at, delivery) = batch;
                Call {
                    kind,
                    delivery,
                    top,
                    batch_context,
                    batch_integrations,
                    batch_sent_at,
                    how,
                }
            },
        )
}

fn received() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
}

/// The request body, and what Kith makes of it.
fn send(call: &Call) -> (String, IngestBatch) {
    let item = spelt(&J::Obj(call.top.clone()), call.how);
    if call.delivery == Delivery::FileLine {
        let mut outcome = IngestBatch::default();
        match judge_event(&item, "web", received()) {
            Ok(event) => outcome.events.push(event),
            Err(rejection) => outcome.rejections.push(*rejection),
        }
        return (item, outcome);
    }
    let body = if call.delivery == Delivery::Batch {
        let mut envelope = vec![("batch".to_string(), J::Arr(vec![J::Obj(call.top.clone())]))];
        for (name, value) in [
            ("context", &call.batch_context),
            ("integrations", &call.batch_integrations),
            ("sentAt", &call.batch_sent_at),
        ] {
            if let Some(value) = value {
                envelope.push((name.to_string(), value.clone()));
            }
        }
        spelt(&J::Obj(envelope), call.how)
    } else {
        item
    };
    let request = if call.delivery == Delivery::Batch {
        parse_batch_request(&body)
    } else {
        parse_single_request(&body, call.kind)
    };
    let outcome = request
        .expect("a generated request is well formed")
        .normalize("web", received());
    (body, outcome)
}

// The rules, written out.

fn id_rule(value: Option<&J>) -> Option<String> {
    match value? {
        J::Str(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        J::Num(n) => Some(n.clone()),
        _ => None,
    }
}

fn name_rule(value: Option<&J>) -> Option<String> {
    match value? {
        J::Str(s) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn object_rule(value: Option<&J>) -> Option<Value> {
    value.filter(|v| matches!(v, J::Obj(_))).map(meaning)
}

/// The item's object, with each key of the batch's it lacks added.
fn merged_rule(own: Option<Value>, defaults: Option<&J>) -> Option<Value> {
    let defaults = match defaults.map(meaning) {
        Some(Value::Object(map)) if !map.is_empty() => map,
        _ => return own,
    };
    let mut merged = match own {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    for (key, value) in defaults {
        merged.entry(key).or_insert(value);
    }
    Some(Value::Object(merged))
}

fn text_rule(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn amount_rule(value: Option<&Value>) -> Option<f64> {
    let amount = match value? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    amount.is_finite().then_some(amount)
}

fn time_rule(value: Option<&J>) -> Option<DateTime<Utc>> {
    match value? {
        J::Str(s) => Some(DateTime::parse_from_rfc3339(s).ok()?.with_timezone(&Utc)),
        _ => None,
    }
}

fn stored_object(text: &Option<String>) -> Option<Value> {
    text.as_deref()
        .map(|t| serde_json::from_str(t).unwrap_or_else(|e| panic!("stored JSON text {t:?}: {e}")))
}

/// Checks what was stored (or why not) against the rules.
fn judge(call: &Call, body: &str, outcome: &IngestBatch) -> Result<(), TestCaseError> {
    let top = &call.top;
    let user_id = id_rule(field(top, "userId"));
    let anonymous_id = id_rule(field(top, "anonymousId"));
    let kind = call.kind;
    let event_name = match kind {
        MessageType::Track => name_rule(field(top, "event")),
        MessageType::Page | MessageType::Screen => name_rule(field(top, "name")),
        _ => None,
    };
    let group_id = id_rule(field(top, "groupId"));
    let previous_id = id_rule(field(top, "previousId"));
    let refused = if user_id.is_none() && anonymous_id.is_none() {
        Some("missing_identity")
    } else if kind == MessageType::Track && event_name.is_none() {
        Some("missing_event")
    } else if kind == MessageType::Group && group_id.is_none() {
        Some("missing_group_id")
    } else if kind == MessageType::Alias && previous_id.is_none() {
        Some("missing_previous_id")
    } else {
        None
    };
    if let Some(code) = refused {
        prop_assert!(outcome.events.is_empty(), "{body}");
        prop_assert_eq!(outcome.rejections.len(), 1);
        let rejection = &outcome.rejections[0];
        prop_assert_eq!(rejection.code.as_str(), code, "{}", body);
        prop_assert!(!rejection.raw.contains("wk_secret"), "{}", rejection.raw);
        return Ok(());
    }
    prop_assert!(
        outcome.rejections.is_empty(),
        "{:?} for {}",
        outcome.rejections,
        body
    );
    let event: &Event = &outcome.events[0];

    prop_assert_eq!(event.kind, kind);
    prop_assert_eq!(&event.user_id, &user_id);
    prop_assert_eq!(&event.anonymous_id, &anonymous_id);
    prop_assert_eq!(&event.group_id, &group_id);
    prop_assert_eq!(&event.previous_id, &previous_id);
    prop_assert_eq!(&event.event, &event_name);
    prop_assert_eq!(event.source.as_str(), "web");
    match name_rule(field(top, "messageId")) {
        Some(id) => prop_assert_eq!(&event.message_id, &id),
        None => prop_assert!(event.message_id.starts_with("kith-")),
    }

    // The objects: as the client meant them, the batch's defaults under the item's own keys.
    let batch = |part: &Option<J>| {
        if call.delivery == Delivery::Batch {
            part.clone()
        } else {
            None
        }
    };
    let properties = object_rule(field(top, "properties"));
    let own_traits = object_rule(field(top, "traits"));
    let context = merged_rule(
        object_rule(field(top, "context")),
        batch(&call.batch_context).as_ref(),
    );
    let integrations = merged_rule(
        object_rule(field(top, "integrations")),
        batch(&call.batch_integrations).as_ref(),
    );
    let context_part = |name: &str| context.as_ref().and_then(|c| c.get(name));
    let context_traits = context_part("traits").filter(|t| t.is_object());
    let traits = match (&own_traits, kind) {
        (None, MessageType::Identify) => context_traits.cloned(),
        _ => own_traits.clone(),
    };
    prop_assert_eq!(stored_object(&event.properties), properties.clone());
    prop_assert_eq!(stored_object(&event.context), context.clone(), "{}", body);
    prop_assert_eq!(stored_object(&event.integrations), integrations);
    prop_assert_eq!(stored_object(&event.traits), traits);

    // Every other top-level field is kept; the write key is not.
    let taken = [
        "type",
        "userId",
        "anonymousId",
        "groupId",
        "previousId",
        "messageId",
        "properties",
        "traits",
        "context",
        "integrations",
        "timestamp",
        "originalTimestamp",
        "sentAt",
        "writeKey",
        "receivedAt",
    ];
    let mut extra = Map::new();
    for (name, _) in top {
        let read_as_the_name = matches!(
            (name.as_str(), kind),
            ("event", MessageType::Track)
                | ("name", MessageType::Page)
                | ("name", MessageType::Screen)
        );
        let a_null_event = name == "event" && matches!(field(top, "event"), Some(J::Null));
        if !taken.contains(&name.as_str()) && !read_as_the_name && !a_null_event {
            extra.insert(name.clone(), meaning(field(top, name).expect("named")));
        }
    }
    let extra = (!extra.is_empty()).then_some(Value::Object(extra));
    prop_assert_eq!(stored_object(&event.extra), extra, "{}", body);

    // The typed columns.
    let property = |name: &str| properties.as_ref().and_then(|p| p.get(name));
    let page = context_part("page").filter(|p| p.is_object());
    let page_part = |name: &str| page.and_then(|p| p.get(name));
    let typed = &event.typed;
    prop_assert_eq!(
        typed.revenue,
        match property("revenue") {
            None | Some(Value::Null) => amount_rule(property("total")),
            Some(Value::String(text)) if text.trim().is_empty() => amount_rule(property("total")),
            given => amount_rule(given),
        }
    );
    prop_assert_eq!(&typed.currency, &text_rule(property("currency")));
    prop_assert_eq!(
        &typed.order_id,
        &text_rule(property("order_id")).or_else(|| text_rule(property("orderId")))
    );
    prop_assert_eq!(
        &typed.page_url,
        &text_rule(property("url")).or_else(|| text_rule(page_part("url")))
    );
    prop_assert_eq!(
        &typed.page_path,
        &text_rule(property("path")).or_else(|| text_rule(page_part("path")))
    );
    prop_assert_eq!(
        &typed.referrer,
        &text_rule(property("referrer")).or_else(|| text_rule(page_part("referrer")))
    );
    prop_assert_eq!(
        &typed.email,
        // A group call's own traits are the group's.
        &text_rule(
            own_traits
                .as_ref()
                .filter(|_| kind != MessageType::Group)
                .and_then(|t| t.get("email"))
        )
        .or_else(|| text_rule(context_traits.and_then(|t| t.get("email"))))
        .or_else(|| text_rule(property("email"))),
        "{}",
        body
    );
    let library = context_part("library").filter(|l| l.is_object());
    prop_assert_eq!(
        &typed.library_name,
        &text_rule(library.and_then(|l| l.get("name")))
    );
    prop_assert_eq!(
        typed.context_names_ip,
        context.as_ref().is_some_and(|c| c.get("ip").is_some())
    );
    let identity = typed.context_identity.clone().unwrap_or_default();
    prop_assert_eq!(stored_object(&identity.traits), context_traits.cloned());

    // The times, by Segment's rule: the device time moved by the device clock's error at
    // sending (`sentAt` against arrival), unless the sender already corrected it. A line of a
    // file arrived when it recorded, if it did; without any time, it happened then.
    let arrived = match call.delivery {
        Delivery::FileLine => time_rule(field(top, "receivedAt")),
        Delivery::Batch | Delivery::OwnPath => Some(received()),
    };
    let explicit = time_rule(field(top, "timestamp"));
    let original = time_rule(field(top, "originalTimestamp"));
    let sent_at =
        time_rule(field(top, "sentAt")).or_else(|| time_rule(batch(&call.batch_sent_at).as_ref()));
    let device = original.or(explicit);
    let expected_time = match (explicit, original, device, sent_at) {
        (Some(corrected), Some(_), _, _) => corrected,
        (_, _, Some(device), Some(sent)) => match arrived {
            Some(arrived) => arrived - (sent - device),
            None => device,
        },
        (_, _, Some(device), None) => device,
        (_, _, None, _) => arrived.unwrap_or(received()),
    };
    prop_assert_eq!(event.timestamp, expected_time, "{}", body);
    prop_assert_eq!(event.original_timestamp, device);
    prop_assert_eq!(event.sent_at, sent_at);
    prop_assert_eq!(event.received_at, received());

    // What the journal keeps reads back as the same event, whole and borrowed.
    let record = Stored::encode_event(event);
    let Ok(Stored::Event(decoded)) = Stored::decode(&record) else {
        return Err(TestCaseError::fail("the record decodes as an event"));
    };
    let mut unstored = event.clone();
    unstored.typed.context_identity = None;
    unstored.typed.context_names_ip = false;
    prop_assert_eq!(&decoded, &unstored);
    let Ok(StoredView::Event(view)) = StoredView::decode(&record) else {
        return Err(TestCaseError::fail(
            "the record decodes as a borrowed event",
        ));
    };
    prop_assert_eq!(view.message_id, event.message_id.as_str());
    prop_assert_eq!(view.properties, event.properties.as_deref());
    prop_assert_eq!(view.context, event.context.as_deref());
    prop_assert_eq!(view.extra, event.extra.as_deref());
    prop_assert_eq!(view.timestamp, event.timestamp.timestamp_micros());
    prop_assert_eq!(view.typed.email, event.typed.email.as_deref());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn what_is_stored_is_what_the_client_meant_however_it_is_spelt(call in call()) {
        let (body, outcome) = send(&call);
        judge(&call, &body, &outcome)?;
    }
}
