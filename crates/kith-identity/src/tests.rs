use proptest::prelude::*;

use crate::*;

fn id(text: &str) -> Identifier {
    let (t, v) = text.split_once(':').unwrap();
    Identifier::new(IdType::from_name(t), v)
}

fn obs(time: i64, message: &str, ids: &[&str]) -> Observation {
    Observation {
        key: ObservationKey {
            time_micros: time,
            message_id: message.to_string(),
        },
        identifiers: ids.iter().map(|t| id(t)).collect(),
        explicit_merge: false,
    }
}

/// Everything observable about the grouping, in a canonical form.
fn summary(resolver: &Resolver) -> Vec<String> {
    let mut out: Vec<String> = resolver
        .profiles()
        .map(|p| {
            let ids: Vec<String> = resolver
                .identifiers(p)
                .iter()
                .map(|(i, k)| format!("{i}@{}", k.time_micros))
                .collect();
            let merges: Vec<String> = resolver
                .merges(p)
                .iter()
                .map(|m| format!("{}<-{}({:?})", m.key.message_id, m.via, m.absorbed))
                .collect();
            let conflicts: Vec<String> = resolver
                .conflicts(p)
                .iter()
                .map(|c| format!("{}:{}", c.key.message_id, c.reason))
                .collect();
            format!(
                "{} {ids:?} merges={merges:?} conflicts={conflicts:?}",
                resolver.profile_id(p)
            )
        })
        .collect();
    out.sort();
    out
}

fn profile_ids(resolver: &Resolver, text: &str) -> String {
    resolver.profile_id(resolver.profile_of(&id(text)).unwrap())
}

#[test]
fn identifiers_seen_together_become_one_profile_with_its_history() {
    let mut r = Resolver::new(IdentityRules::default());
    r.observe(&obs(1, "m1", &["anonymous_id:a1"]));
    r.observe(&obs(2, "m2", &["anonymous_id:a1", "user_id:u1"]));
    r.observe(&obs(3, "m3", &["user_id:u1", "email:ana@example.com"]));
    r.observe(&obs(4, "m4", &["anonymous_id:a2", "email:ana@example.com"]));
    assert_eq!(r.profile_count(), 1);
    let p = r.profile_of(&id("anonymous_id:a2")).unwrap();
    // The anchor is the identifier seen first, so the id is a1's.
    assert_eq!(r.profile_id(p), profile_id_for(&id("anonymous_id:a1")));
    let merges: Vec<_> = r
        .merges(p)
        .iter()
        .map(|m| (m.key.message_id.clone(), m.via.to_string()))
        .collect();
    assert_eq!(
        merges,
        [
            ("m2".to_string(), "anonymous_id:a1".to_string()),
            ("m3".to_string(), "email:ana@example.com".to_string()),
            ("m4".to_string(), "anonymous_id:a2".to_string()),
        ]
    );
}

#[test]
fn two_user_ids_are_never_merged_and_the_conflict_is_visible() {
    let mut r = Resolver::new(IdentityRules::default());
    r.observe(&obs(1, "m1", &["user_id:u1", "anonymous_id:shared-kiosk"]));
    r.observe(&obs(2, "m2", &["user_id:u2", "anonymous_id:shared-kiosk"]));
    assert_ne!(profile_ids(&r, "user_id:u1"), profile_ids(&r, "user_id:u2"));
    assert_eq!(
        profile_ids(&r, "user_id:u1"),
        profile_ids(&r, "anonymous_id:shared-kiosk")
    );
    let p2 = r.profile_of(&id("user_id:u2")).unwrap();
    let conflicts = r.conflicts(p2);
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].key.message_id, "m2");
    assert!(
        conflicts[0]
            .reason
            .contains("2 user_id identifiers; the limit is 1"),
        "{}",
        conflicts[0].reason
    );
}

#[test]
fn one_bad_identifier_cannot_swallow_many_customers() {
    let rules = IdentityRules {
        max_identifiers: 10,
        ..IdentityRules::default()
    };
    let mut r = Resolver::new(rules);
    // A shared device id seen with 50 anonymous browsers (each a person without a user id).
    for i in 0..50 {
        let anon = format!("anonymous_id:a{i}");
        let email = format!("email:c{i}@example.com");
        r.observe(&obs(i, &format!("m{i}"), &[&anon, &email]));
        r.observe(&obs(
            100 + i,
            &format!("n{i}"),
            &[&anon, "device_id:tablet-1"],
        ));
    }
    let biggest = r.profiles().map(|p| r.identifiers(p).len()).max().unwrap();
    assert!(biggest <= 10, "a profile grew to {biggest} identifiers");
    assert!(r.profile_count() >= 25);
}

#[test]
fn a_late_event_that_changes_an_earlier_decision_gives_the_same_result_as_in_order() {
    // In time order, u1 claims the anonymous id first; arriving late must not let u2 keep it.
    let in_order = [
        obs(1, "m1", &["user_id:u1", "anonymous_id:a"]),
        obs(2, "m2", &["user_id:u2", "anonymous_id:a"]),
        obs(3, "m3", &["anonymous_id:a", "email:x@example.com"]),
    ];
    let mut expected = Resolver::new(IdentityRules::default());
    for o in &in_order {
        expected.observe(o);
    }
    let mut late = Resolver::new(IdentityRules::default());
    for o in [&in_order[1], &in_order[2], &in_order[0]] {
        late.observe(o);
    }
    assert_eq!(summary(&late), summary(&expected));
    assert_eq!(
        profile_ids(&late, "email:x@example.com"),
        profile_ids(&late, "user_id:u1")
    );
}

#[test]
fn profile_ids_of_merged_profiles_still_resolve() {
    let mut r = Resolver::new(IdentityRules::default());
    r.observe(&obs(5, "m1", &["anonymous_id:a5"]));
    let old_id = profile_ids(&r, "anonymous_id:a5");
    r.observe(&obs(1, "m0", &["user_id:u1"]));
    r.observe(&obs(6, "m2", &["anonymous_id:a5", "user_id:u1"]));
    let merged = r.profile_of(&id("user_id:u1")).unwrap();
    assert_ne!(
        r.profile_id(merged),
        old_id,
        "u1 was seen first, so it anchors"
    );
    assert_eq!(r.profile_by_id(&old_id), Some(merged));
    assert_eq!(r.profile_by_id("p_nothex"), None);
    assert_eq!(r.profile_by_id("nonsense"), None);
}

#[test]
fn an_export_rebuilds_the_same_resolver() {
    let mut r = Resolver::new(IdentityRules::default());
    r.observe(&obs(1, "m1", &["anonymous_id:a1", "user_id:u1"]));
    r.observe(&obs(2, "m2", &["anonymous_id:a1", "user_id:u2"]));
    r.observe(&obs(3, "m3", &["anonymous_id:a9"]));
    let (identifiers, links) = r.export();
    let mut rebuilt = Resolver::new(IdentityRules::default());
    for (identifier, key) in identifiers {
        rebuilt.observe(&Observation {
            key,
            identifiers: vec![identifier],
            explicit_merge: false,
        });
    }
    for link in links {
        rebuilt.observe(&link);
    }
    assert_eq!(summary(&rebuilt), summary(&r));
}

const UNIVERSE: &[&str] = &[
    "user_id:u1",
    "user_id:u2",
    "user_id:u3",
    "email:e1@x.com",
    "email:e2@x.com",
    "email:e3@x.com",
    "phone:+525512345678",
    "phone:+525587654321",
    "anonymous_id:a1",
    "anonymous_id:a2",
    "anonymous_id:a3",
    "anonymous_id:a4",
    "anonymous_id:a5",
    "anonymous_id:a6",
    "customer_number:c1",
];

fn observations() -> impl Strategy<Value = Vec<Observation>> {
    proptest::collection::vec(
        (
            0i64..12,
            proptest::collection::vec(0..UNIVERSE.len(), 1..4),
            any::<bool>(),
        ),
        1..40,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (time, members, explicit))| Observation {
                key: ObservationKey {
                    time_micros: time,
                    message_id: format!("m{i:02}"),
                },
                identifiers: members.iter().map(|m| id(UNIVERSE[*m])).collect(),
                explicit_merge: explicit && members.len() == 2,
            })
            .collect()
    })
}

fn tight_rules() -> IdentityRules {
    IdentityRules {
        max_identifiers: 5,
        max_merges: 1,
        ..IdentityRules::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn any_arrival_order_gives_the_same_profiles(
        observations in observations(),
        seed in any::<u64>(),
        duplicate in any::<bool>(),
    ) {
        let mut canonical_order = observations.clone();
        canonical_order.sort_by(|a, b| a.key.cmp(&b.key));
        let mut expected = Resolver::new(tight_rules());
        for o in &canonical_order {
            expected.observe(o);
        }

        // A deterministic shuffle from the seed, sometimes with redelivered messages.
        let mut shuffled = observations.clone();
        if duplicate {
            shuffled.extend(observations.iter().take(5).cloned());
        }
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut actual = Resolver::new(tight_rules());
        for o in &shuffled {
            actual.observe(o);
        }
        prop_assert_eq!(summary(&actual), summary(&expected));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Compacting (as after a bulk load) at any point changes nothing observable: the same
    /// profiles, lookups and ids, and later observations land as they would have.
    #[test]
    fn compacting_midway_changes_nothing(
        observations in observations(),
        cut in 0usize..40,
    ) {
        let mut plain = Resolver::new(tight_rules());
        let mut compacted = Resolver::new(tight_rules());
        let cut = cut.min(observations.len());
        for o in &observations[..cut] {
            plain.observe(o);
            compacted.observe(o);
        }
        compacted.compact();
        prop_assert_eq!(compacted.profile_count(), plain.profile_count());
        prop_assert_eq!(compacted.profiles().count(), plain.profile_count());
        for o in &observations[cut..] {
            plain.observe(o);
            compacted.observe(o);
        }
        prop_assert_eq!(summary(&compacted), summary(&plain));
        for text in UNIVERSE {
            let identifier = id(text);
            prop_assert_eq!(
                compacted.profile_of(&identifier).map(|p| compacted.profile_id(p)),
                plain.profile_of(&identifier).map(|p| plain.profile_id(p))
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Rebuilding from an export the way the server starts (identifiers without profiles, then
    /// the links in the order storage gives them, then `compact`) gives the resolver that was
    /// exported, and later observations land as they would have.
    #[test]
    fn loading_an_export_gives_the_exported_resolver(
        observations in observations(),
        cut in 0usize..40,
        reverse_links in any::<bool>(),
    ) {
        let cut = cut.min(observations.len());
        let mut original = Resolver::new(tight_rules());
        for o in &observations[..cut] {
            original.observe(o);
        }
        let (identifiers, mut links) = original.export();
        if reverse_links {
            links.reverse();
        }
        let mut loaded = Resolver::new(tight_rules());
        for (identifier, key) in &identifiers {
            loaded.load_identifier(identifier, key);
        }
        for link in &links {
            loaded.observe(link);
        }
        loaded.compact();
        prop_assert_eq!(summary(&loaded), summary(&original));
        prop_assert_eq!(loaded.profile_count(), original.profile_count());
        for o in &observations[cut..] {
            original.observe(o);
            loaded.observe(o);
        }
        prop_assert_eq!(summary(&loaded), summary(&original));
        for text in UNIVERSE {
            let identifier = id(text);
            prop_assert_eq!(
                loaded.profile_of(&identifier).map(|p| loaded.profile_id(p)),
                original.profile_of(&identifier).map(|p| original.profile_id(p))
            );
        }
    }
}

#[test]
fn a_loaded_identifier_has_no_profile_until_a_link_or_compact_gives_it_one() {
    let key = |t: i64, m: &str| ObservationKey {
        time_micros: t,
        message_id: m.to_string(),
    };
    let mut r = Resolver::new(IdentityRules::default());
    r.load_identifier(&id("anonymous_id:a1"), &key(1, "m1"));
    r.load_identifier(&id("user_id:u1"), &key(2, "m2"));
    r.load_identifier(&id("anonymous_id:a9"), &key(3, "m3"));
    assert_eq!(r.profile_of(&id("anonymous_id:a9")), None);
    // An earlier sighting of a loaded identifier only moves its first sighting.
    r.load_identifier(&id("anonymous_id:a9"), &key(0, "m0"));
    r.observe(&obs(2, "m2", &["anonymous_id:a1", "user_id:u1"]));
    assert_eq!(r.profile_count(), 1);
    r.compact();
    assert_eq!(r.profile_count(), 2);
    let alone = r.profile_of(&id("anonymous_id:a9")).unwrap();
    assert_eq!(
        r.identifiers(alone),
        vec![(id("anonymous_id:a9"), key(0, "m0"))]
    );
    assert_eq!(
        r.profile_of(&id("anonymous_id:a1")),
        r.profile_of(&id("user_id:u1"))
    );
}
