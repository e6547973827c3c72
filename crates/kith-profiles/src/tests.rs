use chrono::{TimeZone, Utc};
use kith_core::{Event, parse::parse_batch_request};
use kith_identity::Lookup;
use serde_json::{Value, json};

use crate::*;

fn events(items: Value) -> Vec<Event> {
    let body = json!({ "batch": items }).to_string();
    let request = parse_batch_request(&body).unwrap();
    let batch = request.normalize("web", Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
    assert!(batch.rejections.is_empty(), "{:?}", batch.rejections);
    batch.events
}

fn apply(store: &ProfileStore, first_seq: u64, items: Value) {
    let events = events(items);
    let numbered: Vec<(u64, &Event)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (first_seq + i as u64, e))
        .collect();
    store.apply_events(&numbered);
}

fn find(store: &ProfileStore, lookup: &str) -> Option<ProfileView> {
    store.find(&Lookup::parse(lookup).unwrap()).unwrap()
}

fn customer_journey() -> Value {
    json!([
        {"type": "page", "anonymousId": "browser-1", "messageId": "m1", "timestamp": "2025-03-01T10:00:00Z",
         "context": {"consent": {"categoryPreferences": {"analytics": true, "marketing": true}}}},
        {"type": "identify", "userId": "u-100", "anonymousId": "browser-1", "messageId": "m2",
         "timestamp": "2025-03-01T10:05:00Z",
         "traits": {"email": " Ana@Example.com ", "phone": "55 1234 5678", "name": "Ana", "plan": "free"}},
        {"type": "track", "anonymousId": "phone-app-7", "event": "Order Completed", "messageId": "m3",
         "timestamp": "2025-03-02T09:00:00Z", "properties": {"revenue": 1500.0, "currency": "MXN"},
         "context": {"traits": {"email": "ana@example.com"},
                     "consent": {"categoryPreferences": {"analytics": true, "marketing": false}}}},
        {"type": "track", "userId": "u-100", "event": "Order Completed", "messageId": "m4",
         "timestamp": "2025-03-05T09:00:00Z", "properties": {"revenue": 500.0}},
        {"type": "identify", "userId": "u-100", "messageId": "m5", "timestamp": "2025-03-04T00:00:00Z",
         "traits": {"plan": "premium"}}
    ])
}

#[test]
fn a_customer_seen_on_two_devices_is_one_profile_with_traits_figures_and_consent() {
    let dir = tempfile::tempdir().unwrap();
    let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
    apply(&store, 1, customer_journey());

    let by_phone = find(&store, "phone:+52 55 1234 5678").expect("phone finds the profile");
    for lookup in [
        "user_id:u-100",
        "anonymous_id:phone-app-7",
        "email:ANA@example.com",
    ] {
        assert_eq!(
            find(&store, lookup).unwrap().profile_id,
            by_phone.profile_id,
            "{lookup}"
        );
    }
    assert_eq!(
        find(&store, &format!("profile_id:{}", by_phone.profile_id)).unwrap(),
        by_phone
    );
    let ids: Vec<String> = by_phone
        .identifiers
        .iter()
        .map(|i| format!("{}:{}", i.id_type, i.value))
        .collect();
    assert_eq!(
        ids,
        [
            "user_id:u-100",
            "email:ana@example.com",
            "phone:+525512345678",
            "anonymous_id:browser-1",
            "anonymous_id:phone-app-7"
        ]
    );
    // m5 (newer than m2) changed the plan; the name m2 set stays.
    assert_eq!(by_phone.traits["plan"], json!("premium"));
    assert_eq!(by_phone.traits["name"], json!("Ana"));
    let computed = &by_phone.computed_traits;
    assert_eq!(
        (
            computed.event_count,
            computed.order_count,
            computed.total_revenue
        ),
        (5, 2, 2000.0)
    );
    assert_eq!(computed.average_order_value, Some(1000.0));
    assert_eq!(
        computed.first_seen.as_deref(),
        Some("2025-03-01T10:00:00.000000Z")
    );
    assert_eq!(
        computed.last_seen.as_deref(),
        Some("2025-03-05T09:00:00.000000Z")
    );
    let consent = by_phone.consent.as_ref().unwrap();
    assert_eq!(
        consent.preferences,
        json!({"analytics": true, "marketing": false})
    );
    assert_eq!(consent.message_id, "m3");
    let via: Vec<&str> = by_phone.merges.iter().map(|m| m.via.as_str()).collect();
    assert_eq!(via.len(), 4, "{:?}", by_phone.merges);
    assert!(find(&store, "email:nobody@example.com").is_none());
}

#[test]
fn profiles_survive_a_restart_and_keep_their_trait_history() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
        apply(&store, 1, customer_journey());
        assert!(store.persist().unwrap() > 0);
        assert_eq!(store.persisted_seq(), 5);
        find(&store, "user_id:u-100").unwrap()
    };
    let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
    assert_eq!(store.applied_seq(), 5);
    let after = find(&store, "user_id:u-100").unwrap();
    assert_eq!(after, before);
    // Replayed seqs are skipped, so figures are not counted twice.
    apply(&store, 1, customer_journey());
    assert_eq!(
        find(&store, "user_id:u-100")
            .unwrap()
            .computed_traits
            .event_count,
        5
    );

    let history = store.trait_history(&after).unwrap();
    let plan: Vec<(&str, &str)> = history
        .iter()
        .filter(|h| h.name == "plan")
        .map(|h| (h.json.as_str(), h.message_id.as_str()))
        .collect();
    assert_eq!(plan, [("\"free\"", "m2"), ("\"premium\"", "m5")]);
}

#[test]
fn placeholder_ids_never_join_people() {
    let dir = tempfile::tempdir().unwrap();
    let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
    apply(
        &store,
        1,
        json!([
            {"type": "identify", "userId": "a", "anonymousId": "null", "messageId": "x1",
             "traits": {"email": "undefined"}},
            {"type": "identify", "userId": "b", "anonymousId": "null", "messageId": "x2",
             "traits": {"email": "undefined"}}
        ]),
    );
    assert_ne!(
        find(&store, "user_id:a").unwrap().profile_id,
        find(&store, "user_id:b").unwrap().profile_id
    );
    assert_eq!(store.profile_count(), 2);
}

/// A trait JSON allows but `serde_json` cannot hold (`1e400`, half a surrogate pair, deep
/// nesting) costs only itself: the email beside it still joins the profile, and the other
/// traits land.
#[test]
fn an_odd_trait_value_costs_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let body = format!(
        r#"{{"batch": [
            {{"type": "identify", "userId": "huge", "traits": {{"email": "huge@ex.com", "plan": "pro", "score": 1e400}}}},
            {{"type": "identify", "userId": "half", "traits": {{"email": "half@ex.com", "plan": "pro", "nick": "\ud83d"}}}},
            {{"type": "identify", "userId": "deep", "traits": {{"email": "deep@ex.com", "plan": "pro", "x": {deep}}}}},
            {{"type": "track", "event": "E", "userId": "ctx", "context": {{"traits": {{"email": "ctx@ex.com", "score": 1e400}}}}}},
            {{"type": "track", "event": "E", "userId": "ext", "context": {{"externalIds": [
                {{"id": "C-1", "type": "crm_id", "collection": "users"}},
                {{"id": "Z-1", "type": "zendesk_id", "score": 1e400}},
                {{"id": 1e400, "type": "odd_id"}}]}}}}
        ]}}"#
    );
    let batch = parse_batch_request(&body)
        .unwrap()
        .normalize("web", Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
    assert!(batch.rejections.is_empty(), "{:?}", batch.rejections);
    let numbered: Vec<(u64, &Event)> = batch
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| (i as u64 + 1, e))
        .collect();
    store.apply_events(&numbered);
    // Every readable external id joins, beside one whose id cannot be read.
    for id in ["crm_id:C-1", "zendesk_id:Z-1"] {
        assert_eq!(
            find(&store, id).map(|p| p.profile_id),
            find(&store, "user_id:ext").map(|p| p.profile_id),
            "{id}"
        );
    }
    for user in ["huge", "half", "deep", "ctx"] {
        let by_email = find(&store, &format!("email:{user}@ex.com"))
            .unwrap_or_else(|| panic!("{user}'s email joined no profile"));
        assert_eq!(
            by_email.profile_id,
            find(&store, &format!("user_id:{user}")).unwrap().profile_id
        );
        if user != "ctx" {
            assert!(
                by_email.traits.contains_key("plan"),
                "{user}: {:?}",
                by_email.traits
            );
        }
    }
}

#[test]
fn lookups_with_unknown_types_or_bad_values_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
    let err = store
        .find(&Lookup::parse("shoe_size:42").unwrap())
        .unwrap_err();
    assert!(matches!(err, LookupError::UnknownType(..)), "{err}");
    // The message names the external types events have carried, which are lookups too.
    apply(
        &store,
        1,
        json!([{"type": "track", "event": "E", "userId": "u-1",
                "context": {"externalIds": [{"id": "crm-1", "type": "hubspot_id", "collection": "users"}]}}]),
    );
    let err = store
        .find(&Lookup::parse("shoe_size:42").unwrap())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "`shoe_size` is not an identifier type here; use profile_id, user_id, anonymous_id, \
         email, phone, hubspot_id"
    );
    // Anyone with an ingest key can make types up: the list holds printable, short names, not
    // the built-in ones again, and at most 20 of them.
    let mut made_up: Vec<Value> = (0..25)
        .map(|i| json!({"id": "x", "type": format!("crm_{i:02}")}))
        .collect();
    made_up.push(json!({"id": "x", "type": "t".repeat(65)}));
    made_up.push(json!({"id": "x", "type": "bad\u{1b}[31m"}));
    made_up.push(json!({"id": "x", "type": "user_id"}));
    apply(
        &store,
        2,
        json!([{"type": "track", "event": "E", "userId": "u-2",
                "context": {"externalIds": made_up}}]),
    );
    let err = store
        .find(&Lookup::parse("shoe_size:42").unwrap())
        .unwrap_err()
        .to_string();
    let listed: String = (0..20).map(|i| format!(", crm_{i:02}")).collect();
    assert_eq!(
        err,
        format!(
            "`shoe_size` is not an identifier type here; use profile_id, user_id, anonymous_id, \
             email, phone{listed} and 6 more"
        )
    );
    let err = store
        .find(&Lookup::parse("email:not-an-email").unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("is not an email address"), "{err}");
}

/// The default extractor, with `customer_number` traits as identifiers.
fn extractor_with_customer_numbers() -> Extractor {
    let settings = ProfileSettings::default();
    Extractor {
        normalizer: settings.normalizer,
        identifier_traits: vec!["customer_number".into()],
        order_event: settings.order_event,
        computed: Vec::new(),
    }
}

#[test]
fn events_read_back_without_parser_hints_give_the_same_facts() {
    let extractor = extractor_with_customer_numbers();
    let parsed = events(json!([
        {"type": "track", "anonymousId": "a1", "event": "Order Completed", "messageId": "m1",
         "properties": {"revenue": 10},
         "context": {"traits": {"email": "x@example.com", "customer_number": 7},
                     "externalIds": [{"id": "crm-1", "type": "hubspot_id", "collection": "users"}],
                     "consent": {"categoryPreferences": {"marketing": false}}}}
    ]));
    let event = &parsed[0];
    assert!(event.typed.context_identity.is_some());
    let mut read_back = event.clone();
    read_back.typed.context_identity = None;
    let facts = extractor.facts(event);
    assert_eq!(extractor.facts(&read_back), facts);
    let ids: Vec<String> = facts.identifiers.iter().map(|i| i.to_string()).collect();
    assert_eq!(
        ids,
        [
            "email:x@example.com",
            "customer_number:7",
            "hubspot_id:crm-1",
            "anonymous_id:a1"
        ]
    );
    assert_eq!(facts.consent.as_deref(), Some(r#"{"marketing":false}"#));
}

#[test]
fn facts_taken_from_an_event_equal_the_facts_read_from_it() {
    let extractor = extractor_with_customer_numbers();
    let mut all = events(json!([
        {"type": "identify", "userId": " u1 ", "anonymousId": "a1", "messageId": "m1",
         "traits": {"email": "X@Example.com", "phone": "55 1234 5678"},
         "context": {"consent": {"categoryPreferences": {"marketing": true}}}},
        {"type": "page", "anonymousId": "a2", "messageId": "m2",
         "context": {"traits": {"customer_number": 9}}},
        {"type": "alias", "userId": "u3", "previousId": "a3", "messageId": "m3"},
        {"type": "track", "userId": "u4", "event": "Order Completed", "messageId": "m4",
         "properties": {"revenue": 5}, "context": {"consent": {"categoryPreferences": {"ads": false}}}}
    ]));
    // Read back from the journal: no parser hints, so consent comes from `context` itself.
    let mut read_back = all[0].clone();
    read_back.typed.context_identity = None;
    all.push(read_back);
    let mut merge = all[2].clone();
    merge.source = KITH_SOURCE.to_string();
    merge.kind = kith_core::MessageType::Track;
    merge.event = Some(MANUAL_MERGE_EVENT.to_string());
    merge.properties = Some(r#"{"identifiers":["user_id:u3","anonymous_id:a3"]}"#.to_string());
    all.push(merge);
    for event in all {
        let read = extractor.facts(&event);
        assert_eq!(extractor.into_facts(event.clone()), read, "{event:?}");
        assert_eq!(read.key.message_id, event.message_id);
    }
    let consented = extractor.into_facts(
        events(json!([
            {"type": "track", "userId": "u5", "event": "E", "messageId": "m5",
             "context": {"consent": {"categoryPreferences": {"marketing": false}}}}
        ]))
        .remove(0),
    );
    assert_eq!(consented.key.message_id, "m5");
    assert_eq!(consented.consent.as_deref(), Some(r#"{"marketing":false}"#));
}

#[test]
fn likely_duplicates_are_scored_with_evidence_and_strangers_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
    apply(
        &store,
        1,
        json!([
            // The same person from the web shop and the CRM: same name, same mailbox name.
            {"type": "identify", "userId": "u-1", "messageId": "d1", "timestamp": "2025-01-01T00:00:00Z",
             "traits": {"email": "ana.lopez@gmail.com", "name": "Ana López"}},
            {"type": "identify", "anonymousId": "crm-1", "messageId": "d2", "timestamp": "2025-01-02T00:00:00Z",
             "traits": {"email": "analopez@empresa.mx", "first_name": "ana", "last_name": "LOPEZ"}},
            // Same phone digits in another country format, different name: a shared family phone?
            {"type": "identify", "userId": "u-2", "messageId": "d3", "timestamp": "2025-01-03T00:00:00Z",
             "traits": {"phone": "+52 33 2345 6789", "name": "Bruno Díaz"}},
            // An area code apart: another number.
            {"type": "identify", "userId": "u-8", "messageId": "d9", "timestamp": "2025-01-09T00:00:00Z",
             "traits": {"phone": "+52 55 2345 6789", "name": "Otro"}},
            {"type": "identify", "userId": "u-3", "messageId": "d4", "timestamp": "2025-01-04T00:00:00Z",
             "traits": {"phone": "+1 332 345 6789", "name": "Carla Ruiz"}},
            // Two accounts one event tried to join: the guard refused, a person should look.
            {"type": "identify", "userId": "u-4", "messageId": "d5", "timestamp": "2025-01-05T00:00:00Z",
             "traits": {"email": "dora@example.com", "name": "Dora"}},
            {"type": "identify", "userId": "u-5", "messageId": "d6", "timestamp": "2025-01-06T00:00:00Z",
             "traits": {"email": "dora@example.com"}},
            {"type": "identify", "userId": "u-9", "messageId": "d10", "timestamp": "2025-01-10T00:00:00Z",
             "traits": {"email": "ximena.torres1745@yahoo.com.mx", "name": "Ximena Torres"}},
            {"type": "identify", "userId": "u-10", "messageId": "d11", "timestamp": "2025-01-11T00:00:00Z",
             "traits": {"email": "ximena.torres1991@icloud.com", "name": "Ximena Torres"}},
            // Strangers who share only a first name.
            {"type": "identify", "userId": "u-6", "messageId": "d7", "timestamp": "2025-01-07T00:00:00Z",
             "traits": {"email": "eva@a.com", "name": "Eva"}},
            {"type": "identify", "userId": "u-7", "messageId": "d8", "timestamp": "2025-01-08T00:00:00Z",
             "traits": {"email": "eva.r@b.com", "name": "Eva"}}
        ]),
    );
    let candidates = crate::find_duplicates(&store.all_views().expect("views"), 0.3);
    // The store's own search sees one view at a time and the identifiers apart: same answer.
    let found = store.find_duplicates(0.3, usize::MAX).expect("search");
    assert_eq!((found.candidates, found.total), (candidates.clone(), 4));
    // A page of the best: the same first ones, and the count of all.
    let page = store.find_duplicates(0.3, 2).expect("search");
    assert_eq!((page.candidates, page.total), (candidates[..2].to_vec(), 4));
    let pairs: Vec<(Vec<String>, Vec<String>, f64)> = candidates
        .iter()
        .map(|c| {
            (
                c.first.identifiers.clone(),
                c.second.identifiers.clone(),
                c.score,
            )
        })
        .collect();
    let involving = |needle: &str| {
        candidates
            .iter()
            .find(|c| {
                c.first
                    .identifiers
                    .iter()
                    .chain(&c.second.identifiers)
                    .any(|i| i == needle)
            })
            .unwrap_or_else(|| panic!("no candidate with {needle}: {pairs:?}"))
    };
    let ana = involving("email:analopez@empresa.mx");
    assert_eq!(ana.score, 0.7, "{ana:?}");
    assert_eq!(ana.evidence.len(), 2, "{ana:?}");
    assert_eq!(
        ana.evidence[0],
        "the same mailbox name at two domains: ana.lopez@gmail.com and analopez@empresa.mx"
    );
    assert!(
        ana.evidence[1] == "same name: `Ana López` and `ana LOPEZ`"
            || ana.evidence[1] == "same name: `ana LOPEZ` and `Ana López`",
        "{ana:?}"
    );
    // Namesakes whose addresses differ only in their numbers: the name alone, below the usual bar.
    let namesakes = involving("user_id:u-9");
    assert_eq!(namesakes.score, 0.4, "{namesakes:?}");
    assert_eq!(namesakes.evidence.len(), 2, "{namesakes:?}");
    assert!(namesakes.evidence[1].starts_with("both have a user id"));
    let phone = involving("user_id:u-3");
    assert_eq!(phone.score, 0.6);
    assert_eq!(
        phone.evidence[0],
        "phone numbers ending in 3323456789 under different names"
    );
    assert!(
        phone.evidence[1].starts_with("both have a user id"),
        "{phone:?}"
    );
    let dora = involving("user_id:u-5");
    assert_eq!(dora.score, 0.4);
    assert!(
        dora.evidence[0].starts_with("an event joined them but the merge was refused: "),
        "{dora:?}"
    );
    assert!(
        !candidates
            .iter()
            .any(|c| c.first.identifiers.contains(&"user_id:u-6".to_string())
                || c.second.identifiers.contains(&"user_id:u-6".to_string())),
        "{pairs:?}"
    );
    assert_eq!(candidates.len(), 4, "{pairs:?}");
    // The usual bar leaves the namesakes and the refusal alone; a higher one keeps the strongest.
    assert_eq!(
        crate::find_duplicates(&store.all_views().expect("views"), 0.5).len(),
        2
    );
    assert_eq!(
        crate::find_duplicates(&store.all_views().expect("views"), 0.7).len(),
        1
    );
}

/// A mailbox that spells its owner's name is not evidence beside the name, and a name counts by
/// how many profiles share it: the same name in the same city says much when no one else there
/// has that name, little when someone does, and little for two accounts (two sign-ups are more
/// often two people of one name); a name many profiles have, or two cities, say little.
#[test]
fn namesakes_count_once_and_a_name_counts_by_who_else_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
    apply(
        &store,
        1,
        json!([
            // A CRM contact and the one account of her name in Puebla.
            {"type": "identify", "userId": "u-1", "messageId": "n1", "timestamp": "2025-01-01T00:00:00Z",
             "traits": {"email": "sofia.lopez3922@hotmail.com", "name": "Sofía López", "city": "Puebla"}},
            {"type": "identify", "anonymousId": "crm-1", "messageId": "n2", "timestamp": "2025-01-02T00:00:00Z",
             "traits": {"email": "sofia.lopez.t@empresa.com.mx", "name": "Sofía López", "city": "puebla"}},
            // A CRM contact and two accounts of his name in Tijuana: either could be his.
            {"type": "identify", "userId": "u-2", "messageId": "n3", "timestamp": "2025-01-03T00:00:00Z",
             "traits": {"email": "juan.hernandez1432@hotmail.com", "name": "Juan Hernández", "city": "Tijuana"}},
            {"type": "identify", "userId": "u-3", "messageId": "n4", "timestamp": "2025-01-04T00:00:00Z",
             "traits": {"email": "juan.hernandez77@gmail.com", "name": "Juan Hernández", "city": "Tijuana"}},
            {"type": "identify", "anonymousId": "crm-2", "messageId": "n5", "timestamp": "2025-01-05T00:00:00Z",
             "traits": {"email": "juan.hernandez@empresa.com.mx", "name": "Juan Hernández", "city": "Tijuana"}},
            // Two accounts, the only two of this name in León.
            {"type": "identify", "userId": "u-4", "messageId": "n6", "timestamp": "2025-01-06T00:00:00Z",
             "traits": {"email": "maria.sanchez4579@icloud.com", "name": "María Sánchez", "city": "León"}},
            {"type": "identify", "userId": "u-5", "messageId": "n7", "timestamp": "2025-01-07T00:00:00Z",
             "traits": {"email": "maria.sanchez@gmail.com", "name": "María Sánchez", "city": "León"}},
            // A mailbox close to another that is not its owner's name is still evidence.
            {"type": "identify", "userId": "u-6", "messageId": "n8", "timestamp": "2025-01-08T00:00:00Z",
             "traits": {"email": "lagatita@gmail.com", "name": "Renata Gil"}},
            {"type": "identify", "anonymousId": "crm-3", "messageId": "n9", "timestamp": "2025-01-09T00:00:00Z",
             "traits": {"email": "la.gatita88@empresa.com.mx", "name": "Renata Gil"}},
            // Three of one name, no city: any two are one of three pairs.
            {"type": "identify", "userId": "u-7", "messageId": "n10", "timestamp": "2025-01-10T00:00:00Z",
             "traits": {"email": "lp1@a.com", "name": "Luis Pérez"}},
            {"type": "identify", "userId": "u-8", "messageId": "n11", "timestamp": "2025-01-11T00:00:00Z",
             "traits": {"email": "lp2@b.com", "name": "Luis Pérez"}},
            {"type": "identify", "anonymousId": "crm-4", "messageId": "n12", "timestamp": "2025-01-12T00:00:00Z",
             "traits": {"email": "lp3@c.com", "name": "Luis Pérez"}},
            // The same work mailbox at two employers, of a name three profiles have.
            {"type": "identify", "anonymousId": "crm-5", "messageId": "n13", "timestamp": "2025-01-13T00:00:00Z",
             "traits": {"email": "jorge.ruiz.r@uno.mx", "name": "Jorge Ruiz"}},
            {"type": "identify", "anonymousId": "crm-6", "messageId": "n14", "timestamp": "2025-01-14T00:00:00Z",
             "traits": {"email": "jorge.ruiz.r@dos.mx", "name": "Jorge Ruiz"}},
            {"type": "identify", "userId": "u-9", "messageId": "n15", "timestamp": "2025-01-15T00:00:00Z",
             "traits": {"email": "jorge.ruiz9@gmail.com", "name": "Jorge Ruiz"}},
            // One name in two cities.
            {"type": "identify", "userId": "u-10", "messageId": "n16", "timestamp": "2025-01-16T00:00:00Z",
             "traits": {"email": "rosa1@a.com", "name": "Rosa Ortega", "city": "Mérida"}},
            {"type": "identify", "anonymousId": "crm-7", "messageId": "n17", "timestamp": "2025-01-17T00:00:00Z",
             "traits": {"email": "rosa2@b.com", "name": "Rosa Ortega", "city": "León"}}
        ]),
    );
    let found = store.find_duplicates(0.1, usize::MAX).expect("search");
    let pair = |x: &str, y: &str| {
        found
            .candidates
            .iter()
            .find(|c| {
                let (first, second) = (&c.first.identifiers, &c.second.identifiers);
                (first.iter().any(|i| i == x) && second.iter().any(|i| i == y))
                    || (first.iter().any(|i| i == y) && second.iter().any(|i| i == x))
            })
            .unwrap_or_else(|| panic!("no candidate {x} / {y}: {found:?}"))
    };
    let sofia = pair("user_id:u-1", "email:sofia.lopez.t@empresa.com.mx");
    assert_eq!(sofia.score, 0.61, "{sofia:?}");
    assert_eq!(
        sofia.evidence,
        ["same name, `Sofía López`, and city, Puebla, where no other profile there has that name"]
    );
    for account in ["user_id:u-2", "user_id:u-3"] {
        let juan = pair(account, "email:juan.hernandez@empresa.com.mx");
        assert_eq!(juan.score, 0.407, "{juan:?}");
        assert_eq!(
            juan.evidence,
            ["same name, `Juan Hernández`, and city, Tijuana, as 1 other profile there"]
        );
    }
    let accounts = pair("user_id:u-4", "user_id:u-5");
    assert_eq!(accounts.score, 0.305, "{accounts:?}");
    let renata = pair("user_id:u-6", "email:la.gatita88@empresa.com.mx");
    assert_eq!(renata.score, 0.58, "{renata:?}");
    assert!(
        renata.evidence[1].starts_with("similar email addresses: "),
        "{renata:?}"
    );
    let luis = pair("user_id:u-7", "email:lp3@c.com");
    assert_eq!(luis.score, 0.267, "{luis:?}");
    assert_eq!(
        luis.evidence,
        ["same name: `Luis Pérez` and `Luis Pérez`, as 1 other profile has"]
    );
    let jorge = pair("email:jorge.ruiz.r@uno.mx", "email:jorge.ruiz.r@dos.mx");
    assert_eq!(jorge.score, 0.511, "{jorge:?}");
    let rosa = pair("user_id:u-10", "email:rosa2@b.com");
    assert_eq!(rosa.score, 0.2, "{rosa:?}");
    assert_eq!(
        rosa.evidence,
        ["same name: `Rosa Ortega` and `Rosa Ortega`, but in two cities (Mérida and León)"]
    );
    // At the usual bar, only the pairs with evidence beyond a common name.
    let usual = store.find_duplicates(0.5, usize::MAX).expect("search");
    assert_eq!(usual.total, 3, "{usual:?}");
}

/// Settings that keep at most `resident` identifiers' facts in memory.
fn with_resident_facts(resident: usize) -> ProfileSettings {
    ProfileSettings {
        resident_facts: resident,
        ..ProfileSettings::default()
    }
}

/// Every profile's view, by profile id (a store rebuilt from disk lists them in another order).
fn views_by_id(store: &ProfileStore) -> Vec<ProfileView> {
    let mut views = store.all_views().unwrap();
    views.sort_by(|a, b| a.profile_id.cmp(&b.profile_id));
    views
}

fn later_events() -> Value {
    json!([
        {"type": "identify", "userId": "u-100", "messageId": "m6", "timestamp": "2025-03-06T00:00:00Z",
         "traits": {"plan": "enterprise"}},
        {"type": "track", "anonymousId": "phone-app-7", "event": "Order Completed", "messageId": "m7",
         "timestamp": "2025-03-07T09:00:00Z", "properties": {"revenue": 250.0}},
        {"type": "identify", "userId": "u-200", "messageId": "m8", "timestamp": "2025-03-07T10:00:00Z",
         "traits": {"email": "beto@example.com", "name": "Beto"}}
    ])
}

#[test]
fn facts_evicted_from_memory_are_read_back_for_lookups_later_events_and_all_views() {
    let (bounded_dir, unbounded_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bounded = ProfileStore::open(bounded_dir.path(), with_resident_facts(2)).unwrap();
    let unbounded = ProfileStore::open(unbounded_dir.path(), ProfileSettings::default()).unwrap();
    for store in [&bounded, &unbounded] {
        apply(store, 1, customer_journey());
        assert!(store.persist().unwrap() > 0);
    }
    // The journey's events set facts on three identifiers; eviction goes a tenth below the
    // bound of two, to one.
    assert_eq!(bounded.read().facts.len(), 1);
    assert_eq!(unbounded.read().facts.len(), 3);
    let lookups = [
        "user_id:u-100",
        "anonymous_id:phone-app-7",
        "email:ana@example.com",
    ];
    for lookup in lookups {
        assert_eq!(find(&bounded, lookup), find(&unbounded, lookup), "{lookup}");
    }

    // Later events reach identifiers whose facts are only on disk: they are read back, changed
    // and written again, never started afresh.
    for store in [&bounded, &unbounded] {
        apply(store, 6, later_events());
        store.persist().unwrap();
    }
    let profile = find(&bounded, "user_id:u-100").unwrap();
    assert_eq!(profile, find(&unbounded, "user_id:u-100").unwrap());
    assert_eq!(profile.traits["plan"], json!("enterprise"));
    assert_eq!(profile.traits["name"], json!("Ana"));
    assert_eq!(profile.computed_traits.event_count, 7);
    assert_eq!(profile.computed_traits.order_count, 3);
    assert_eq!(profile.computed_traits.total_revenue, 2250.0);
    assert_eq!(
        find(&bounded, "email:beto@example.com"),
        find(&unbounded, "email:beto@example.com")
    );
    assert_eq!(views_by_id(&bounded), views_by_id(&unbounded));
    assert_eq!(views_by_id(&bounded).len(), 2);

    // And after a restart, which now reads no facts until they are used.
    drop(bounded);
    let reopened = ProfileStore::open(bounded_dir.path(), with_resident_facts(2)).unwrap();
    assert_eq!(reopened.read().facts.len(), 0);
    for lookup in lookups {
        assert_eq!(
            find(&reopened, lookup),
            find(&unbounded, lookup),
            "{lookup}"
        );
    }
    assert_eq!(views_by_id(&reopened), views_by_id(&unbounded));

    // The traits alone, read in one pass without views, are the views' traits: whether the
    // facts are in memory, only on disk (evicted, or not yet read after the restart) or both.
    let names: Vec<String> = ["plan", "name", "email", "never_set"]
        .map(String::from)
        .to_vec();
    for store in [&reopened, &unbounded] {
        let mut from_views: Vec<(String, Vec<(String, String)>)> = views_by_id(store)
            .into_iter()
            .map(|view| {
                let traits = view
                    .traits
                    .iter()
                    .filter(|(name, _)| names.contains(name))
                    .map(|(name, value)| (name.clone(), value.to_string()))
                    .collect();
                (view.profile_id, traits)
            })
            .collect();
        let mut alone = Vec::new();
        store
            .for_each_traits(&names, |profile_id, traits| {
                let traits = traits
                    .iter()
                    .map(|(name, value)| (name.clone(), value.json.clone()))
                    .collect();
                alone.push((profile_id.to_string(), traits));
            })
            .unwrap();
        alone.sort();
        from_views.sort();
        assert_eq!(alone, from_views);
        assert!(
            alone.iter().any(|(_, traits)| traits.len() == 3),
            "{alone:?}"
        );
    }
}

#[test]
fn facts_changed_since_the_last_persist_stay_in_memory_whatever_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = ProfileStore::open(dir.path(), with_resident_facts(2)).unwrap();
    apply(&store, 1, customer_journey());
    // Not persisted: nothing may leave memory, or the changes would be lost.
    assert_eq!(store.read().facts.len(), 3);
    let before = find(&store, "user_id:u-100").unwrap();
    store.persist().unwrap();
    assert_eq!(store.read().facts.len(), 1);
    assert_eq!(find(&store, "user_id:u-100").unwrap(), before);
}

/// `orders`: how many `Order Completed` events a profile has sent.
fn orders_count_trait() -> ComputedTraitDef {
    ComputedTraitDef {
        name: "orders".into(),
        kind: computed::Kind::Count,
        event: Some("Order Completed".into()),
        message_type: None,
        property: None,
        window_days: None,
    }
}

#[test]
fn removing_a_computed_trait_drops_its_states_from_facts_only_on_disk_too() {
    let dir = tempfile::tempdir().unwrap();
    let orders = orders_count_trait();
    let store = ProfileStore::open(dir.path(), with_resident_facts(2)).unwrap();
    let registered = store.register_trait(orders).unwrap();
    store.install_definitions(registered.definitions.clone());
    drop(registered);
    apply(&store, 1, customer_journey());
    store.persist().unwrap();
    let stored_states = || {
        let conn = persist::open(dir.path()).unwrap();
        let mut with_state = 0;
        persist::for_each_facts(&conn, |_, facts| {
            with_state += usize::from(facts.computed.contains_key("orders"));
        })
        .unwrap();
        with_state
    };
    // Both buyers' identifiers (u-100's and phone-app-7's) count orders; one is in memory.
    assert_eq!(stored_states(), 2);
    assert_eq!(store.read().facts.len(), 1);
    store.remove_trait("orders").unwrap();
    store.persist().unwrap();
    assert_eq!(stored_states(), 0);
}

// A trait removed and declared again while its first declaration's past was still waiting to
// be computed: the first recomputation, when it runs, neither adds to the new declaration's
// values (they would count twice) nor marks it ready before its own past is computed.
#[test]
fn a_late_recomputation_of_a_removed_declaration_leaves_the_trait_declared_again_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = ProfileStore::open(dir.path(), with_resident_facts(100)).unwrap();
    apply(&store, 1, customer_journey());
    let orders = orders_count_trait();
    let declare = || {
        let registered = store.register_trait(orders.clone()).unwrap();
        store.install_definitions(registered.definitions.clone());
        registered.declaration
    };
    let status = || store.computed_traits()[0].status;
    let counted = || {
        let view = serde_json::to_value(find(&store, "user_id:u-100").unwrap()).unwrap();
        view["computed_traits"]["orders"].clone()
    };
    let past: Vec<(u64, Event)> = (1..).zip(events(customer_journey())).collect();
    let names = ["orders".to_string()];

    let first = declare();
    store.remove_trait("orders").unwrap();
    let second = declare();
    assert_ne!(first, second);

    assert_eq!(
        store.add_past_observations(&names, 5, &past, Some(first)),
        0
    );
    assert!(!store.traits_computed(&names, 0, Some(first)));
    assert_eq!(status(), "computing");
    assert_eq!(counted(), json!(0), "nothing counted yet");

    // u-100's profile holds both orders (one made on the phone before it was linked).
    assert_eq!(
        store.add_past_observations(&names, 5, &past, Some(second)),
        2
    );
    assert!(store.traits_computed(&names, 2, Some(second)));
    assert_eq!(status(), "ready");
    assert_eq!(counted(), json!(2));
}

/// Two orders of 1e308 add up past the largest f64. Held at it instead, the sums stay numbers:
/// infinity would be written to profiles.db as null, after which the identifier's facts could
/// not be read again (its later events lost from its figures, every pass over all profiles
/// failing, and the server not starting once computed traits changed).
#[test]
fn sums_too_large_for_a_float_are_held_at_the_largest_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let revenue_sum = ComputedTraitDef {
        name: "spent".into(),
        kind: computed::Kind::Sum,
        event: Some("Order Completed".into()),
        message_type: None,
        property: Some("revenue".into()),
        window_days: None,
    };
    let orders = json!([
        {"type": "track", "userId": "big", "event": "Order Completed", "messageId": "o1",
         "properties": {"revenue": 1e308}},
        {"type": "track", "userId": "big", "event": "Order Completed", "messageId": "o2",
         "properties": {"revenue": 1.5e308}},
        {"type": "track", "userId": "big", "event": "Order Completed", "messageId": "o3",
         "properties": {"revenue": -1e308}}
    ]);
    let figures = |view: ProfileView| {
        let view = serde_json::to_value(view).unwrap();
        (
            view["computed_traits"]["total_revenue"].clone(),
            view["computed_traits"]["spent"].clone(),
        )
    };
    let expected = (json!(f64::MAX - 1e308), json!(f64::MAX - 1e308));
    {
        let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
        let registered = store.register_trait(revenue_sum).unwrap();
        store.install_definitions(registered.definitions.clone());
        // Declared before any event: it has no past to compute.
        assert!(store.traits_computed(&["spent".into()], 0, Some(registered.declaration)));
        apply(&store, 1, orders);
        store.persist().unwrap();
        assert_eq!(figures(find(&store, "user_id:big").unwrap()), expected);
    }
    // Read back from disk, with resident facts bounded so they are read from profiles.db.
    let store = ProfileStore::open(dir.path(), with_resident_facts(1)).unwrap();
    assert_eq!(figures(find(&store, "user_id:big").unwrap()), expected);
    assert_eq!(
        views_by_id(&store).len(),
        1,
        "a pass over all profiles reads it"
    );
}

/// Identifiers are stored as `type:value` lines: a line break inside a value, or a `:` in an
/// external type, would be read back after a restart as identifiers nobody sent (here joining a
/// stranger to a victim's email), and an external id typed `user_id` as the built-in type. Such
/// values are refused as identities, so the graph after a restart is the graph before it.
#[test]
fn identifiers_that_would_read_back_as_others_are_refused_and_the_graph_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let events = json!([
        {"type": "identify", "userId": "victim", "messageId": "m1", "traits": {"email": "victim@ex.com"}},
        {"type": "track", "event": "E", "userId": "u", "anonymousId": "x\nemail:victim@ex.com", "messageId": "m2"},
        {"type": "track", "event": "E", "anonymousId": "a2", "messageId": "m3",
         "context": {"externalIds": [
             {"type": "crm:id", "id": "C-1", "collection": "users"},
             {"type": "user_id", "id": "victim", "collection": "users"},
             {"type": "crm", "id": "C-2\tX", "collection": "users"}
         ]}}
    ]);
    let lookups = ["user_id:victim", "user_id:u", "anonymous_id:a2"];
    let before: Vec<Vec<String>> = {
        let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
        apply(&store, 1, events);
        store.persist().unwrap();
        lookups
            .iter()
            .map(|l| identifiers_of(&find(&store, l).unwrap()))
            .collect()
    };
    assert_eq!(
        before,
        [
            vec!["email:victim@ex.com", "user_id:victim"],
            vec!["user_id:u"],
            vec!["anonymous_id:a2"],
        ]
    );
    let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
    let after: Vec<Vec<String>> = lookups
        .iter()
        .map(|l| identifiers_of(&find(&store, l).unwrap()))
        .collect();
    assert_eq!(after, before);
    for lookup in lookups {
        assert_eq!(find(&store, lookup).unwrap().conflicts, []);
    }
}

/// `kith sql` and the other offline readers open `profiles.db` beside the running server. A
/// reader whose computed traits differ from the states kept (a trait still being computed by
/// the server, another kith.toml) must leave those states out as it reads them, never drop them
/// on disk: that lost the server's values for good.
#[test]
fn a_read_only_store_never_writes_profiles_db_even_when_its_traits_differ() {
    let dir = tempfile::tempdir().unwrap();
    let settings = |orders: ComputedTraitDef| ProfileSettings {
        computed: vec![orders],
        ..with_resident_facts(1)
    };
    let counted = |store: &ProfileStore| {
        let view = serde_json::to_value(find(store, "user_id:u-100").unwrap()).unwrap();
        view["computed_traits"]["orders"].clone()
    };
    {
        let store = ProfileStore::open(dir.path(), settings(orders_count_trait())).unwrap();
        apply(&store, 1, customer_journey());
        store.persist().unwrap();
        assert_eq!(counted(&store), json!(2));
    }
    let changed = ComputedTraitDef {
        window_days: Some(7),
        ..orders_count_trait()
    };
    {
        let reader = ProfileStore::open_read_only(dir.path(), settings(changed)).unwrap();
        assert_eq!(
            reader.backfill_plan(),
            Some((vec!["orders".to_string()], 5)),
            "recomputed from the events by whoever reads"
        );
        assert_eq!(
            counted(&reader),
            json!(0),
            "the states kept under the old definition are left out"
        );
        apply(&reader, 6, later_events());
        assert_eq!(reader.persist().unwrap(), 0);
    }
    let store = ProfileStore::open(dir.path(), settings(orders_count_trait())).unwrap();
    assert_eq!(store.applied_seq(), 5);
    assert_eq!(store.backfill_plan(), None);
    assert_eq!(
        counted(&store),
        json!(2),
        "the server's states are as it left them"
    );
}

/// A reader of a data directory that has no profile stores yet (only keys, say) reads empty
/// ones and leaves no file behind.
#[test]
fn a_read_only_store_creates_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let reader = ProfileStore::open_read_only(dir.path(), with_resident_facts(1)).unwrap();
    assert!(find(&reader, "user_id:u-100").is_none());
    apply(&reader, 1, customer_journey());
    assert_eq!(reader.persist().unwrap(), 0);
    drop(reader);
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(files.is_empty(), "{files:?}");
}

/// Last write wins across a profile's identifiers, whatever the order events arrive in: a value
/// set again later counts from its later time, also when it was already the identifier's.
#[test]
fn a_trait_set_again_later_wins_over_another_identifiers_value_set_in_between() {
    let set_plan = |id: &str, time: &str, ids: Value| {
        let mut event = json!({"type": "identify", "messageId": id, "timestamp": time,
                               "traits": {"plan": if id == "m2" { "pro" } else { "free" }}});
        for (key, value) in ids.as_object().unwrap() {
            event[key] = value.clone();
        }
        event
    };
    let events = [
        set_plan("m1", "2026-01-01T00:00:10Z", json!({"userId": "u"})),
        set_plan("m2", "2026-01-01T00:00:15Z", json!({"anonymousId": "a"})),
        set_plan(
            "m3",
            "2026-01-01T00:00:20Z",
            json!({"userId": "u", "anonymousId": "a"}),
        ),
    ];
    for order in [[0, 1, 2], [2, 0, 1], [1, 2, 0], [2, 1, 0]] {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
        for (seq, index) in order.iter().enumerate() {
            apply(&store, seq as u64 + 1, json!([events[*index].clone()]));
        }
        let view = serde_json::to_value(find(&store, "user_id:u").unwrap()).unwrap();
        assert_eq!(
            view["traits"]["plan"], "free",
            "arriving in the order {order:?}"
        );
    }
}

#[test]
fn external_identifier_types_seen_in_events_are_lookups_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let event = json!([
        {"type": "track", "anonymousId": "a1", "event": "Signed Up", "messageId": "m1",
         "context": {"externalIds": [{"id": "crm-1", "type": "hubspot_id", "collection": "users"}]}}
    ]);
    let before = {
        let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
        assert!(matches!(
            store.find(&Lookup::parse("hubspot_id:crm-1").unwrap()),
            Err(LookupError::UnknownType(..))
        ));
        apply(&store, 1, event);
        store.persist().unwrap();
        find(&store, "hubspot_id:crm-1").expect("found by its external id")
    };
    let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
    assert_eq!(find(&store, "hubspot_id:crm-1"), Some(before));
}

#[test]
fn passes_a_range_of_profiles_at_a_time_visit_each_profile_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
    // More than two ranges' worth of profiles (people sharing a device stay apart).
    let people = 2 * super::VIEWS_PER_LOCK + 300;
    let items: Vec<Value> = (0..people)
        .map(|i| {
            json!({"type": "identify", "userId": format!("u-{i}"), "anonymousId": format!("a-{}", i / 2),
                   "traits": {"n": i}})
        })
        .collect();
    apply(&store, 1, Value::Array(items));
    let expected = store.profile_count();
    assert!(expected > super::VIEWS_PER_LOCK * 2 - 200, "{expected}");
    let mut ids: Vec<String> = store
        .all_views()
        .unwrap()
        .into_iter()
        .map(|v| v.profile_id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), expected);
    let mut with_traits = Vec::new();
    store
        .for_each_traits(&["n".to_string()], |id, traits| {
            assert!(traits.get("n").is_some(), "{id}");
            with_traits.push(id.to_string());
        })
        .unwrap();
    with_traits.sort();
    assert_eq!(with_traits, ids);

    // A pass with a deadline stops at the first range that starts after it, and says so; a
    // range started in time is visited whole.
    let mut visited = 0;
    let whole = store
        .for_each_view_until(Some(std::time::Instant::now()), |_| visited += 1)
        .unwrap();
    assert_eq!((whole, visited), (false, 0));
    let mut visited = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let whole = store
        .for_each_view_until(Some(deadline), |_| visited += 1)
        .unwrap();
    assert_eq!((whole, visited), (true, expected));
    // The deadline passes inside the first range: the range is finished, the next not begun.
    let mut visited = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(50);
    let whole = store
        .for_each_view_until(Some(deadline), |_| {
            if visited == 0 {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            visited += 1;
        })
        .unwrap();
    assert!(!whole);
    assert!(
        visited > super::VIEWS_PER_LOCK / 2 && visited <= super::VIEWS_PER_LOCK,
        "{visited}"
    );
}

/// The server retires journal segments once `profiles.db` holds their events, so its commits
/// must be on disk when they return (SQLite's `synchronous = FULL`, 2), not only in the WAL's
/// page cache.
#[test]
fn profiles_db_commits_are_synced_before_they_return() {
    let dir = tempfile::tempdir().unwrap();
    let conn = persist::open(dir.path()).unwrap();
    let synchronous: i64 = conn
        .pragma_query_value(None, "synchronous", |row| row.get(0))
        .unwrap();
    assert_eq!(synchronous, 2);
}

/// A pass over every profile reads `profiles.db` one read transaction per range while events
/// are applied, persisted and evicted from memory beside it: no pass may show a profile older
/// than an earlier pass showed it (facts persisted after a range's transaction began must still
/// be read from memory, not from the transaction's older snapshot).
#[test]
fn passes_over_all_profiles_during_persists_and_evictions_never_go_back_in_time() {
    let dir = tempfile::tempdir().unwrap();
    // Facts leave memory after nearly every persist.
    let store = ProfileStore::open(dir.path(), with_resident_facts(8)).unwrap();
    let customers = 300;
    let rounds: u64 = 25;
    let round = |n: u64| {
        let items: Vec<Value> = (0..customers)
            .map(|i| {
                json!({"type": "track", "userId": format!("u-{i}"), "event": "Viewed",
                            "messageId": format!("m-{n}-{i}"), "timestamp": "2025-03-01T10:00:00Z"})
            })
            .collect();
        Value::Array(items)
    };
    apply(&store, 1, round(0));
    store.persist().unwrap();
    let writing_done = std::sync::atomic::AtomicBool::new(false);
    let passes = std::thread::scope(|scope| {
        scope.spawn(|| {
            for n in 1..=rounds {
                apply(&store, 1 + n * customers, round(n));
                store.persist().unwrap();
            }
            writing_done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut seen: std::collections::HashMap<String, u64> = Default::default();
        let mut passes = 0;
        loop {
            let last = writing_done.load(std::sync::atomic::Ordering::SeqCst);
            store
                .for_each_view(|view| {
                    let count = view.computed_traits.event_count;
                    let before = seen.insert(view.profile_id.clone(), count).unwrap_or(0);
                    assert!(
                        count >= before,
                        "{}: {count} events after {before} in an earlier pass",
                        view.profile_id
                    );
                })
                .unwrap();
            passes += 1;
            if last {
                break;
            }
        }
        assert_eq!(seen.len(), customers as usize);
        assert!(seen.values().all(|&count| count == rounds + 1), "{seen:?}");
        passes
    });
    assert!(passes > 1, "{passes}");
}

/// A pass over every profile lets the store's lock go between ranges, and a merge then may move
/// a profile (and its id) into a slot the pass has already read: a new identifier takes a slot
/// an earlier merge freed, and the older profile it is linked to lives on in that slot. An
/// audit saw hundreds of profiles missing from `profiles` at once under such a load. Every
/// profile there both when a pass starts and when it ends is visited, and none twice.
#[test]
fn a_pass_visits_every_profile_that_lived_through_it_once_while_people_merge() {
    let dir = tempfile::tempdir().unwrap();
    let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
    let people = 3 * super::VIEWS_PER_LOCK;
    let moved = 20;
    // Slot by slot: 20 visitors, 20 customers known by user id, then visitors.
    let visitors: Vec<Value> = (0..people)
        .map(|i| {
            let mut event = json!({"type": "identify", "messageId": format!("v-{i}"),
                                   "timestamp": "2025-01-01T00:00:00Z"});
            let (field, value) = if (moved..2 * moved).contains(&i) {
                ("userId", format!("k-{}", i - moved))
            } else {
                ("anonymousId", format!("a-{i}"))
            };
            event[field] = json!(value);
            event
        })
        .collect();
    for (n, chunk) in visitors.chunks(1000).enumerate() {
        apply(&store, 1 + 1000 * n as u64, Value::Array(chunk.to_vec()));
    }
    // The first 20 visitors turn out to be those customers: their slots are freed.
    let sign_ins: Vec<Value> = (0..moved)
        .map(|i| {
            json!({"type": "identify", "userId": format!("k-{i}"), "anonymousId": format!("a-{i}"),
                   "messageId": format!("w-{i}"), "timestamp": "2025-01-02T00:00:00Z"})
        })
        .collect();
    apply(&store, 10_000, Value::Array(sign_ins));
    assert_eq!(store.read().resolver.profiles_in(0..moved).count(), 0);
    let live_ids = |store: &ProfileStore| -> std::collections::HashSet<String> {
        let state = store.read();
        let ids = state
            .resolver
            .profiles()
            .map(|p| state.resolver.profile_id(p));
        ids.collect()
    };
    let before = live_ids(&store);

    // Once the pass has let go of its first range, visitors far down the slots sign up: a new
    // user id takes a freed slot, and the visitor's older profile lives on there, under its
    // own id.
    let mut signed_up = false;
    *store.between_ranges.lock().unwrap() = Some(Box::new(move |store: &ProfileStore| {
        if !std::mem::replace(&mut signed_up, true) {
            let items: Vec<Value> = (0..moved)
                .map(|j| {
                    json!({"type": "identify", "userId": format!("u-{j}"),
                           "anonymousId": format!("a-{}", 2500 + j),
                           "messageId": format!("x-{j}"), "timestamp": "2025-06-01T00:00:00Z"})
                })
                .collect();
            apply(store, 20_000, Value::Array(items));
        }
    }));
    let mut visited = Vec::new();
    store
        .for_each_view(|view| visited.push(view.profile_id))
        .unwrap();
    let after = live_ids(&store);
    let low: Vec<String> = {
        let state = store.read();
        let ids = state
            .resolver
            .profiles_in(0..moved)
            .map(|p| state.resolver.profile_id(p));
        ids.collect()
    };
    // The first sign-up took the last slot freed; the slot it freed in turn went to the next.
    assert_eq!(low.len(), 1, "a new user id took a freed slot");
    assert!(before.contains(&low[0]), "under the visitor's id");
    let seen: std::collections::HashSet<&String> = visited.iter().collect();
    let missed: Vec<&String> = before
        .intersection(&after)
        .filter(|id| !seen.contains(*id))
        .collect();
    assert!(missed.is_empty(), "{} missed: {missed:?}", missed.len());
    assert_eq!(seen.len(), visited.len(), "a profile visited twice");
}

// Declarations at once each keep the others': every one registered while another was being
// installed would otherwise install "the definitions before + its own", losing the other's.
#[test]
fn traits_declared_at_once_are_all_kept_and_a_name_taken_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        std::sync::Arc::new(ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap());
    let declare = |name: String| ComputedTraitDef {
        name,
        kind: computed::Kind::Count,
        event: None,
        message_type: None,
        property: None,
        window_days: None,
    };
    let outcomes: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            let def = declare(format!("t{}", i % 8));
            std::thread::spawn(move || match store.register_trait(def) {
                Ok(registered) => {
                    // Installing takes a while: another declaration has time to start.
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    store.install_definitions(registered.definitions.clone());
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let refused: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert_eq!(refused.len(), 8, "{outcomes:?}");
    assert!(
        refused.iter().all(|e| e.contains("exists already")),
        "{refused:?}"
    );
    let mut names: Vec<String> = store
        .computed_traits()
        .iter()
        .map(|t| t.definition.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, (0..8).map(|i| format!("t{i}")).collect::<Vec<_>>());
}

fn identifiers_of(view: &ProfileView) -> Vec<String> {
    let mut ids: Vec<String> = view
        .identifiers
        .iter()
        .map(|i| format!("{}:{}", i.id_type, i.value))
        .collect();
    ids.sort();
    ids
}

/// Segment's `previousId` is "a user id or an anonymous id". Read as a user id every time, each
/// alias gave a profile two user ids, which the default limit of one refuses: no alias merged
/// anyone, and the anonymous id became a user id of a profile of its own.
#[test]
fn an_alias_merges_the_anonymous_visitor_it_retires_and_a_renamed_user_id_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
    apply(
        &store,
        1,
        json!([
            // A visitor browses, then signs up; a server-side SDK (analytics-python) aliases the
            // anonymous id to the new user id, without an anonymousId of its own.
            {"type": "page", "anonymousId": "anon-1", "name": "Landing", "messageId": "a1",
             "timestamp": "2025-01-01T10:00:00Z"},
            {"type": "alias", "previousId": " anon-1 ", "userId": "user-1", "messageId": "a2",
             "timestamp": "2025-01-01T10:05:00Z"},
            // analytics.js: the anonymous id it retires is the call's anonymousId too.
            {"type": "alias", "previousId": "anon-2", "anonymousId": "anon-2", "userId": "user-2",
             "messageId": "b1", "timestamp": "2025-01-02T10:00:00Z"},
            // An alias before anything else was seen of either id.
            {"type": "alias", "previousId": "never-seen-3", "userId": "user-3", "messageId": "c1",
             "timestamp": "2025-01-03T10:00:00Z"},
            {"type": "track", "anonymousId": "never-seen-3", "event": "Opened App", "messageId": "c2",
             "timestamp": "2025-01-03T11:00:00Z"},
            // A user id renamed: both are user ids, and one profile may hold one.
            {"type": "identify", "userId": "old-user-4", "messageId": "d1",
             "timestamp": "2025-01-04T10:00:00Z", "traits": {"plan": "pro"}},
            {"type": "alias", "previousId": "old-user-4", "userId": "new-user-4", "messageId": "d2",
             "timestamp": "2025-01-04T11:00:00Z"},
        ]),
    );
    let signed_up = find(&store, "user_id:user-1").unwrap();
    assert_eq!(
        identifiers_of(&signed_up),
        ["anonymous_id:anon-1", "user_id:user-1"]
    );
    assert!(signed_up.conflicts.is_empty(), "{:?}", signed_up.conflicts);
    assert_eq!(signed_up.merges.len(), 1, "{:?}", signed_up.merges);
    assert!(
        find(&store, "user_id:anon-1").is_none(),
        "the anonymous id is not taken for a user id"
    );
    let browser = find(&store, "user_id:user-2").unwrap();
    assert_eq!(
        identifiers_of(&browser),
        ["anonymous_id:anon-2", "user_id:user-2"]
    );
    assert!(browser.conflicts.is_empty(), "{:?}", browser.conflicts);
    let first_call = find(&store, "user_id:user-3").unwrap();
    assert_eq!(
        identifiers_of(&first_call),
        ["anonymous_id:never-seen-3", "user_id:user-3"]
    );
    assert_eq!(first_call.computed_traits.event_count, 2);
    // The renamed user: a second user id is refused, and said on both profiles.
    let renamed = find(&store, "user_id:new-user-4").unwrap();
    assert_eq!(identifiers_of(&renamed), ["user_id:new-user-4"]);
    assert_eq!(renamed.conflicts.len(), 1, "{:?}", renamed.conflicts);
    let old = find(&store, "user_id:old-user-4").unwrap();
    assert_eq!(old.conflicts.len(), 1, "{:?}", old.conflicts);
    assert!(find(&store, "anonymous_id:old-user-4").is_none());
}
