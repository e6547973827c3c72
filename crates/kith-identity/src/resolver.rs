//! The identity graph: which identifiers belong to one person.
//!
//! # The rule, and why the result does not depend on arrival order
//!
//! Every observation (an event, an identify or alias call, an imported contact) that carries two or
//! more identifiers is a *link*. The grouping is defined as what you get by applying all links one
//! by one in canonical order — by event time, then messageId — where applying a link merges the
//! profiles of its identifiers, strongest identifier's profile first (`user_id`, then email, phone,
//! external ids, anonymous id), unless the merge breaks a guard ([`IdentityRules`]): then the
//! conflict is recorded and that merge is not made.
//!
//! That definition is a function of the set of observations, so any arrival order gives the same
//! result provided the resolver keeps it exact incrementally:
//! - a link later (in canonical order) than every link touching the profiles involved is applied
//!   directly: nothing it could have interacted with comes after it;
//! - otherwise (an event that arrived late, or an earlier sighting of a known link) the cluster of
//!   profiles connected to it through links is rebuilt from its links in canonical order.
//!
//! A profile's id is derived from its anchor, the identifier seen first (earliest observation,
//! then identifier order), so it is order-independent too; an id whose anchor was merged into
//! another profile keeps resolving to the profile that identifier now belongs to.

use std::cmp::Ordering;

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashMap, HashSet, HashTable};

use crate::identifier::{IdType, Identifier};
use crate::rules::IdentityRules;
use crate::text::{Text, TextArena};

/// Where an observation sits in the canonical order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObservationKey {
    /// Event time, microseconds since the Unix epoch.
    pub time_micros: i64,
    pub message_id: String,
}

/// Identifiers seen together in one message.
#[derive(Debug, Clone)]
pub struct Observation {
    pub key: ObservationKey,
    pub identifiers: Vec<Identifier>,
    /// An explicit `alias` call rather than identifiers that happened to share an event.
    pub explicit_merge: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeReason {
    /// An `alias` call.
    Alias,
    /// The identifiers appeared in the same message.
    SharedIdentifier,
}

impl MergeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            MergeReason::Alias => "alias",
            MergeReason::SharedIdentifier => "shared_identifier",
        }
    }
}

/// One merge in a profile's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeRecord {
    /// The message that caused it, and when it happened.
    pub key: ObservationKey,
    pub reason: MergeReason,
    /// The identifier of the message that belonged to the profile being absorbed.
    pub via: Identifier,
    /// What the absorbed profile held (at most [`MAX_LISTED`], see `absorbed_count`).
    pub absorbed: Vec<Identifier>,
    pub absorbed_count: usize,
}

/// A merge the guards refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictRecord {
    pub key: ObservationKey,
    /// Why, in words: which limit the merge would have broken.
    pub reason: String,
    /// The identifiers of the message.
    pub identifiers: Vec<Identifier>,
}

/// How many identifiers a merge record lists.
pub const MAX_LISTED: usize = 20;

/// A stable index of a profile inside the resolver (valid until the next change).
pub type ProfileRef = u32;
/// What [`Resolver::observe`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObserveOutcome {
    /// Identifiers seen for the first time.
    pub new_identifiers: Vec<Identifier>,
    /// Known identifiers this observation saw earlier than any before (their first sighting moved).
    pub earlier_sightings: Vec<Identifier>,
    /// True when a link was recorded (new, or seen earlier than before).
    pub new_link: bool,
    /// True when a cluster had to be rebuilt because of a late observation.
    pub rebuilt: bool,
}

/// The profile of an identifier added by [`Resolver::load_identifier`] that no link has touched
/// yet: it gets a profile of its own from the first observation naming it, or from
/// [`Resolver::compact`].
const NO_PROFILE: u32 = u32::MAX;

/// An [`ObservationKey`] as the resolver keeps it: the message id in the resolver's text arena.
#[derive(Debug, Clone, Copy)]
struct Key {
    time_micros: i64,
    message_id: Text,
}

/// An identifier, its first sighting and its profile (32 bytes; the strings are in the arena).
#[derive(Debug, Clone)]
struct IdNode {
    value: Text,
    first_seen: Key,
    profile: u32,
    /// Index in `Resolver::types`.
    id_type: u32,
}

#[derive(Debug, Clone, Default)]
struct ProfileNode {
    members: Vec<u32>,
    /// Links touching any member (applied or refused), possibly listed twice after merges.
    links: Vec<u32>,
    /// The link with the latest key among `links`. A link's key only changes (moves earlier)
    /// together with a rebuild of every profile listing it, which sets this again.
    latest_link: Option<u32>,
    merges: Vec<MergeNode>,
    conflicts: Vec<ConflictRecord>,
    /// Merges of two multi-identifier profiles this profile has been through.
    profile_merges: u32,
    anchor: u32,
    alive: bool,
}

/// One merge in a profile's history. Its message and reason are those of the link that made it
/// (a link's key or kind only changes together with a rebuild that remakes its merges).
#[derive(Debug, Clone)]
struct MergeNode {
    link: u32,
    via: u32,
    /// Sorted by identifier, at most [`MAX_LISTED`].
    absorbed: Box<[u32]>,
    absorbed_count: u32,
}

#[derive(Debug, Clone)]
struct LinkNode {
    /// Sorted by identifier order, deduplicated.
    ids: Box<[u32]>,
    key: Key,
    explicit: bool,
}

enum Sighting {
    New,
    Earlier,
    Known,
}

/// The identity graph. Identifiers, links and profiles are numbered and refer to each other by
/// number; strings live once in a text arena. At hundreds of thousands of customers this is the
/// largest state the server keeps in memory, so it is kept compact: about 32 bytes an identifier
/// and 40 a link plus their strings, and a profile's members, links and merges.
#[derive(Debug, Clone)]
pub struct Resolver {
    rules: IdentityRules,
    text: TextArena,
    /// Identifier types by number: the built-in ones and each external type seen.
    types: Vec<IdType>,
    type_numbers: HashMap<IdType, u32>,
    ids: Vec<IdNode>,
    hasher: DefaultHashBuilder,
    /// Identifiers by (type, value): the table holds their numbers only.
    by_identifier: HashTable<u32>,
    /// Identifiers by the profile id they anchor (its 64-bit hash), the first one on a collision.
    by_hash: HashTable<u32>,
    profiles: Vec<ProfileNode>,
    free_profiles: Vec<u32>,
    links: Vec<LinkNode>,
    /// Links by their identifiers.
    by_link: HashTable<u32>,
}

/// The profile id of the profile anchored at `identifier`.
pub fn profile_id_for(identifier: &Identifier) -> String {
    profile_id_from_hash(identifier_hash(
        identifier.id_type.name(),
        &identifier.value,
    ))
}

fn profile_id_from_hash(hash: u64) -> String {
    format!("p_{hash:016x}")
}

/// Stable across versions and machines (the id is stored by users): FNV-1a over the type name,
/// a zero byte and the value. Tiny, and collisions of 64-bit ids among millions of identifiers
/// are vanishingly unlikely (`by_hash` keeps the first on a collision).
fn identifier_hash(type_name: &str, value: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = type_name.bytes().chain([0]).chain(value.bytes());
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Resolver {
    pub fn new(rules: IdentityRules) -> Resolver {
        Resolver {
            rules,
            text: TextArena::default(),
            types: Vec::new(),
            type_numbers: HashMap::new(),
            ids: Vec::new(),
            hasher: DefaultHashBuilder::default(),
            by_identifier: HashTable::new(),
            by_hash: HashTable::new(),
            profiles: Vec::new(),
            free_profiles: Vec::new(),
            links: Vec::new(),
            by_link: HashTable::new(),
        }
    }

    pub fn rules(&self) -> &IdentityRules {
        &self.rules
    }

    /// Records an observation and brings the grouping up to date.
    pub fn observe(&mut self, observation: &Observation) -> ObserveOutcome {
        self.observe_parts(
            &observation.key,
            &observation.identifiers,
            observation.explicit_merge,
        )
    }

    /// [`Resolver::observe`] without building an [`Observation`].
    pub fn observe_parts(
        &mut self,
        key: &ObservationKey,
        identifiers: &[Identifier],
        explicit_merge: bool,
    ) -> ObserveOutcome {
        let mut outcome = ObserveOutcome::default();
        let mut ids = Vec::with_capacity(identifiers.len());
        for identifier in identifiers {
            let (id, sighting) = self.sighting(identifier, key);
            match sighting {
                Sighting::New => outcome.new_identifiers.push(identifier.clone()),
                Sighting::Earlier => outcome.earlier_sightings.push(identifier.clone()),
                Sighting::Known => {}
            }
            if self.ids[id as usize].profile == NO_PROFILE {
                self.ids[id as usize].profile = self.new_profile(id);
            }
            ids.push(id);
        }
        ids.sort_by(|a, b| self.identifier_order(*a, *b));
        ids.dedup();
        if ids.len() < 2 {
            return outcome;
        }
        let link = match self.link_of(&ids) {
            Some(link)
                if self
                    .key_cmp_with(self.links[link as usize].key, key)
                    .is_le() =>
            {
                return outcome;
            }
            Some(link) => {
                let key = self.intern_key(key);
                let node = &mut self.links[link as usize];
                node.key = key;
                node.explicit = explicit_merge;
                link
            }
            None => self.add_link(ids.clone().into_boxed_slice(), key, explicit_merge),
        };
        outcome.new_link = true;
        let involved = self.profiles_of(&ids);
        let latest = involved
            .iter()
            .filter_map(|p| self.profiles[*p as usize].latest_link)
            .all(|l| self.key_cmp_with(self.links[l as usize].key, key).is_lt());
        if latest && !self.profiles_list_link(&involved, link) {
            self.apply_link(link);
        } else {
            self.rebuild_cluster(&involved, link);
            outcome.rebuilt = true;
        }
        outcome
    }

    fn add_link(&mut self, ids: Box<[u32]>, key: &ObservationKey, explicit: bool) -> u32 {
        let link = self.links.len() as u32;
        let hash = self.hasher.hash_one(&*ids);
        let key = self.intern_key(key);
        self.links.push(LinkNode { ids, key, explicit });
        let (links, hasher) = (&self.links, &self.hasher);
        self.by_link.insert_unique(hash, link, |other| {
            hasher.hash_one(&*links[*other as usize].ids)
        });
        link
    }

    fn link_of(&self, ids: &[u32]) -> Option<u32> {
        self.by_link
            .find(self.hasher.hash_one(ids), |link| {
                *self.links[*link as usize].ids == *ids
            })
            .copied()
    }

    fn intern_key(&mut self, key: &ObservationKey) -> Key {
        Key {
            time_micros: key.time_micros,
            message_id: self.text.push(&key.message_id),
        }
    }

    fn observation_key(&self, key: Key) -> ObservationKey {
        ObservationKey {
            time_micros: key.time_micros,
            message_id: self.text.get(key.message_id).to_string(),
        }
    }

    fn key_cmp(&self, a: Key, b: Key) -> Ordering {
        a.time_micros
            .cmp(&b.time_micros)
            .then_with(|| self.text.get(a.message_id).cmp(self.text.get(b.message_id)))
    }

    fn key_cmp_with(&self, a: Key, b: &ObservationKey) -> Ordering {
        a.time_micros
            .cmp(&b.time_micros)
            .then_with(|| self.text.get(a.message_id).cmp(b.message_id.as_str()))
    }

    fn type_number(&mut self, id_type: &IdType) -> u32 {
        if let Some(number) = self.type_numbers.get(id_type) {
            return *number;
        }
        let number = self.types.len() as u32;
        self.types.push(id_type.clone());
        self.type_numbers.insert(id_type.clone(), number);
        number
    }

    fn identifier(&self, id: u32) -> Identifier {
        let node = &self.ids[id as usize];
        Identifier::new(
            self.types[node.id_type as usize].clone(),
            self.text.get(node.value),
        )
    }

    /// The order of `Identifier`: type, then value.
    fn identifier_order(&self, a: u32, b: u32) -> Ordering {
        let (a, b) = (&self.ids[a as usize], &self.ids[b as usize]);
        let types = if a.id_type == b.id_type {
            Ordering::Equal
        } else {
            self.types[a.id_type as usize].cmp(&self.types[b.id_type as usize])
        };
        types.then_with(|| self.text.get(a.value).cmp(self.text.get(b.value)))
    }

    fn stored_hash(&self, id: u32) -> u64 {
        let node = &self.ids[id as usize];
        self.hasher.hash_one((
            &self.types[node.id_type as usize],
            self.text.get(node.value),
        ))
    }

    fn stored_profile_hash(&self, id: u32) -> u64 {
        let node = &self.ids[id as usize];
        identifier_hash(
            self.types[node.id_type as usize].name(),
            self.text.get(node.value),
        )
    }

    /// Interns an identifier (a new one becomes a profile of its own) and keeps its first sighting.
    fn sighting(&mut self, identifier: &Identifier, key: &ObservationKey) -> (u32, Sighting) {
        if let Some(id) = self.index_of(identifier) {
            if self
                .key_cmp_with(self.ids[id as usize].first_seen, key)
                .is_gt()
            {
                self.ids[id as usize].first_seen = self.intern_key(key);
                let profile = self.ids[id as usize].profile;
                if profile != NO_PROFILE {
                    self.refresh_anchor(profile);
                }
                return (id, Sighting::Earlier);
            }
            return (id, Sighting::Known);
        }
        let id = self.add_identifier(identifier, key);
        self.ids[id as usize].profile = self.new_profile(id);
        (id, Sighting::New)
    }

    /// Rebuilding a resolver from what [`Resolver::export`] gave: each identifier with its first
    /// sighting, then the links (with [`Resolver::observe`]), then [`Resolver::compact`]. The
    /// same as observing each identifier alone, but an identifier gets its profile only when a
    /// link names it or at `compact` (no profile of its own made first and merged away at once:
    /// at hundreds of thousands of identifiers that was most of the start-up's memory peak).
    pub fn load_identifier(&mut self, identifier: &Identifier, first_seen: &ObservationKey) {
        if self.index_of(identifier).is_some() {
            self.sighting(identifier, first_seen);
        } else {
            self.add_identifier(identifier, first_seen);
        }
    }

    /// A new identifier, without a profile yet.
    fn add_identifier(&mut self, identifier: &Identifier, key: &ObservationKey) -> u32 {
        let id = self.ids.len() as u32;
        let node = IdNode {
            id_type: self.type_number(&identifier.id_type),
            value: self.text.push(&identifier.value),
            first_seen: self.intern_key(key),
            profile: NO_PROFILE,
        };
        self.ids.push(node);
        let hash = self
            .hasher
            .hash_one((&identifier.id_type, identifier.value.as_str()));
        // `insert_unique` needs the table mutably while rehashing reads the rest: take it out.
        let mut by_identifier = std::mem::take(&mut self.by_identifier);
        by_identifier.insert_unique(hash, id, |other| self.stored_hash(*other));
        self.by_identifier = by_identifier;
        let profile_hash = identifier_hash(identifier.id_type.name(), &identifier.value);
        if self.anchored_by_hash(profile_hash).is_none() {
            let mut by_hash = std::mem::take(&mut self.by_hash);
            by_hash.insert_unique(self.hasher.hash_one(profile_hash), id, |other| {
                self.hasher.hash_one(self.stored_profile_hash(*other))
            });
            self.by_hash = by_hash;
        }
        id
    }

    /// The identifier whose profile id has this hash.
    fn anchored_by_hash(&self, profile_hash: u64) -> Option<u32> {
        self.by_hash
            .find(self.hasher.hash_one(profile_hash), |id| {
                self.stored_profile_hash(*id) == profile_hash
            })
            .copied()
    }

    fn new_profile(&mut self, member: u32) -> u32 {
        let node = ProfileNode {
            members: vec![member],
            anchor: member,
            alive: true,
            ..ProfileNode::default()
        };
        match self.free_profiles.pop() {
            Some(slot) => {
                self.profiles[slot as usize] = node;
                slot
            }
            None => {
                self.profiles.push(node);
                (self.profiles.len() - 1) as u32
            }
        }
    }

    fn anchor_order(&self, a: u32, b: u32) -> Ordering {
        let (first_a, first_b) = (
            self.ids[a as usize].first_seen,
            self.ids[b as usize].first_seen,
        );
        self.key_cmp(first_a, first_b)
            .then_with(|| self.identifier_order(a, b))
    }

    fn refresh_anchor(&mut self, profile: u32) {
        let members = &self.profiles[profile as usize].members;
        let anchor = members
            .iter()
            .copied()
            .min_by(|a, b| self.anchor_order(*a, *b))
            .unwrap_or(0);
        self.profiles[profile as usize].anchor = anchor;
    }

    /// The distinct profiles of `ids`, in the order of the ids (strongest identifier first).
    fn profiles_of(&self, ids: &[u32]) -> Vec<u32> {
        let mut profiles = Vec::with_capacity(ids.len());
        for id in ids {
            let profile = self.ids[*id as usize].profile;
            if !profiles.contains(&profile) {
                profiles.push(profile);
            }
        }
        profiles
    }

    fn profiles_list_link(&self, profiles: &[u32], link: u32) -> bool {
        profiles
            .iter()
            .any(|p| self.profiles[*p as usize].links.contains(&link))
    }

    /// Applies one link on top of the current state (the greedy step of the canonical rule).
    fn apply_link(&mut self, link: u32) {
        let ids = self.links[link as usize].ids.clone();
        let involved = self.profiles_of(&ids);
        let target = involved[0];
        for &other in &involved[1..] {
            match self.merge_refusal(target, other) {
                None => {
                    let via = ids
                        .iter()
                        .copied()
                        .find(|id| self.ids[*id as usize].profile == other);
                    // Always found: `other` is the profile of one of the link's identifiers.
                    if let Some(via) = via {
                        self.merge(target, other, link, via);
                    }
                }
                Some(why) => {
                    let conflict = ConflictRecord {
                        key: self.observation_key(self.links[link as usize].key),
                        reason: why,
                        identifiers: ids.iter().map(|id| self.identifier(*id)).collect(),
                    };
                    self.profiles[other as usize]
                        .conflicts
                        .push(conflict.clone());
                    self.profiles[target as usize].conflicts.push(conflict);
                }
            }
        }
        let key = self.links[link as usize].key;
        for profile in self.profiles_of(&ids) {
            let later = match self.profiles[profile as usize].latest_link {
                None => true,
                Some(latest) => self.key_cmp(key, self.links[latest as usize].key).is_gt(),
            };
            let node = &mut self.profiles[profile as usize];
            node.links.push(link);
            if later {
                node.latest_link = Some(link);
            }
        }
    }

    /// Why profiles `a` and `b` may not become one, or `None` when they may: what a link
    /// between them would meet now.
    pub fn merge_refusal(&self, a: ProfileRef, b: ProfileRef) -> Option<String> {
        let (pa, pb) = (&self.profiles[a as usize], &self.profiles[b as usize]);
        let total = pa.members.len() + pb.members.len();
        if total > self.rules.max_identifiers {
            return Some(format!(
                "the merged profile would hold {total} identifiers; the limit is {}",
                self.rules.max_identifiers
            ));
        }
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for id in pa.members.iter().chain(&pb.members) {
            *counts.entry(self.ids[*id as usize].id_type).or_default() += 1;
        }
        let mut broken: Vec<(&IdType, usize)> = counts
            .into_iter()
            .map(|(t, n)| (&self.types[t as usize], n))
            .filter(|(t, n)| *n > self.rules.limit(t))
            .collect();
        broken.sort();
        if let Some((id_type, n)) = broken.first() {
            return Some(format!(
                "the merged profile would hold {n} {} identifiers; the limit is {}",
                id_type.name(),
                self.rules.limit(id_type)
            ));
        }
        let both_grown = pa.members.len() > 1 && pb.members.len() > 1;
        let merges =
            pa.profile_merges as usize + pb.profile_merges as usize + usize::from(both_grown);
        if both_grown && merges > self.rules.max_merges {
            return Some(format!(
                "the merged profile would have been through {merges} profile merges; the limit is {}",
                self.rules.max_merges
            ));
        }
        None
    }

    fn merge(&mut self, target: u32, other: u32, link: u32, via: u32) {
        let absorbed = std::mem::take(&mut self.profiles[other as usize]);
        let mut listed = absorbed.members.clone();
        listed.sort_by(|a, b| self.identifier_order(*a, *b));
        listed.truncate(MAX_LISTED);
        let record = MergeNode {
            link,
            via,
            absorbed: listed.into_boxed_slice(),
            absorbed_count: absorbed.members.len() as u32,
        };
        for id in &absorbed.members {
            self.ids[*id as usize].profile = target;
        }
        let both_grown =
            absorbed.members.len() > 1 && self.profiles[target as usize].members.len() > 1;
        let anchor_wins = self.anchor_order(absorbed.anchor, self.profiles[target as usize].anchor)
            == Ordering::Less;
        let latest_link = match (
            self.profiles[target as usize].latest_link,
            absorbed.latest_link,
        ) {
            (Some(mine), Some(theirs))
                if self
                    .key_cmp(
                        self.links[theirs as usize].key,
                        self.links[mine as usize].key,
                    )
                    .is_gt() =>
            {
                Some(theirs)
            }
            (mine, theirs) => mine.or(theirs),
        };
        let node = &mut self.profiles[target as usize];
        node.members.extend(absorbed.members);
        node.links.extend(absorbed.links);
        node.latest_link = latest_link;
        node.merges.extend(absorbed.merges);
        node.merges.push(record);
        node.conflicts.extend(absorbed.conflicts);
        node.profile_merges = node
            .profile_merges
            .saturating_add(absorbed.profile_merges)
            .saturating_add(u32::from(both_grown));
        if anchor_wins {
            node.anchor = absorbed.anchor;
        }
        self.free_profiles.push(other);
    }

    /// Rebuilds every profile connected (through links, applied or refused) to `seeds` and to
    /// `link`, applying their links in canonical order.
    fn rebuild_cluster(&mut self, seeds: &[u32], link: u32) {
        let mut cluster_profiles: HashSet<u32> = seeds.iter().copied().collect();
        let mut stack: Vec<u32> = seeds.to_vec();
        let mut cluster_links: HashSet<u32> = HashSet::from([link]);
        let mut pending_links = vec![link];
        loop {
            while let Some(link) = pending_links.pop() {
                for id in &self.links[link as usize].ids {
                    let profile = self.ids[*id as usize].profile;
                    if cluster_profiles.insert(profile) {
                        stack.push(profile);
                    }
                }
            }
            let Some(profile) = stack.pop() else { break };
            for link in &self.profiles[profile as usize].links {
                if cluster_links.insert(*link) {
                    pending_links.push(*link);
                }
            }
        }
        let mut members = Vec::new();
        for profile in &cluster_profiles {
            let node = std::mem::take(&mut self.profiles[*profile as usize]);
            members.extend(node.members);
            self.free_profiles.push(*profile);
        }
        for id in members {
            let profile = self.new_profile(id);
            self.ids[id as usize].profile = profile;
        }
        let mut ordered: Vec<u32> = cluster_links.into_iter().collect();
        ordered.sort_by(|a, b| self.canonical_link_order(*a, *b));
        for link in ordered {
            self.apply_link(link);
        }
    }

    fn canonical_link_order(&self, a: u32, b: u32) -> Ordering {
        let (la, lb) = (&self.links[a as usize], &self.links[b as usize]);
        self.key_cmp(la.key, lb.key).then_with(|| {
            for (ia, ib) in la.ids.iter().zip(lb.ids.iter()) {
                let order = self.identifier_order(*ia, *ib);
                if order.is_ne() {
                    return order;
                }
            }
            la.ids.len().cmp(&lb.ids.len())
        })
    }

    /// The index of an identifier in `ids`.
    fn index_of(&self, identifier: &Identifier) -> Option<u32> {
        let hash = self
            .hasher
            .hash_one((&identifier.id_type, identifier.value.as_str()));
        self.by_identifier
            .find(hash, |id| {
                let node = &self.ids[*id as usize];
                self.text.get(node.value) == identifier.value
                    && self.types[node.id_type as usize] == identifier.id_type
            })
            .copied()
    }

    /// The profile an identifier belongs to.
    pub fn profile_of(&self, identifier: &Identifier) -> Option<ProfileRef> {
        self.index_of(identifier)
            .map(|id| self.ids[id as usize].profile)
            .filter(|profile| *profile != NO_PROFILE)
    }

    /// Gives each identifier [`Resolver::load_identifier`] added that no link named a profile
    /// of its own, and drops the slots of profiles merged away and spare capacity. Profile refs
    /// handed out before are invalid afterwards.
    pub fn compact(&mut self) {
        for id in 0..self.ids.len() as u32 {
            if self.ids[id as usize].profile == NO_PROFILE {
                self.ids[id as usize].profile = self.new_profile(id);
            }
        }
        let mut renumbered = vec![u32::MAX; self.profiles.len()];
        let mut alive = Vec::with_capacity(self.profile_count());
        for (old, mut node) in std::mem::take(&mut self.profiles).into_iter().enumerate() {
            if node.alive {
                // Lists grown one push at a time keep up to half their capacity unused; after
                // a load that is a tenth of the resolver. A link listed twice (after merges)
                // is listed once.
                node.members.shrink_to_fit();
                node.links.sort_unstable();
                node.links.dedup();
                node.links.shrink_to_fit();
                node.merges.shrink_to_fit();
                renumbered[old] = alive.len() as u32;
                alive.push(node);
            }
        }
        for node in &mut self.ids {
            node.profile = renumbered[node.profile as usize];
        }
        self.profiles = alive;
        self.free_profiles = Vec::new();
        self.ids.shrink_to_fit();
        self.links.shrink_to_fit();
        self.text.shrink_to_fit();
        let mut table = std::mem::take(&mut self.by_identifier);
        table.shrink_to_fit(|id| self.stored_hash(*id));
        self.by_identifier = table;
        let mut table = std::mem::take(&mut self.by_hash);
        table.shrink_to_fit(|id| self.hasher.hash_one(self.stored_profile_hash(*id)));
        self.by_hash = table;
        let mut table = std::mem::take(&mut self.by_link);
        table.shrink_to_fit(|link| self.hasher.hash_one(&*self.links[*link as usize].ids));
        self.by_link = table;
    }

    /// The profile a profile id names now: the profile its anchor identifier belongs to, so ids of
    /// profiles merged away keep working.
    pub fn profile_by_id(&self, profile_id: &str) -> Option<ProfileRef> {
        let hex = profile_id.strip_prefix("p_")?;
        if hex.len() != 16 {
            return None;
        }
        let hash = u64::from_str_radix(hex, 16).ok()?;
        let id = self.anchored_by_hash(hash)?;
        Some(self.ids[id as usize].profile).filter(|profile| *profile != NO_PROFILE)
    }

    /// The identifier a profile's id is derived from (see [`Resolver::profile_id`]), as a
    /// number: one profile's at a time, whatever slot it moves to, and far cheaper to compare
    /// than the id (until [`Resolver::compact`] renumbers identifiers).
    pub fn profile_anchor(&self, profile: ProfileRef) -> u32 {
        self.profiles[profile as usize].anchor
    }

    pub fn profile_id(&self, profile: ProfileRef) -> String {
        let anchor = self.profiles[profile as usize].anchor;
        profile_id_from_hash(self.stored_profile_hash(anchor))
    }

    /// The identifiers of a profile with their first sighting, in identifier order.
    pub fn identifiers(&self, profile: ProfileRef) -> Vec<(Identifier, ObservationKey)> {
        let mut members = self.profiles[profile as usize].members.clone();
        members.sort_by(|a, b| {
            self.identifier_order(*a, *b).then_with(|| {
                self.key_cmp(
                    self.ids[*a as usize].first_seen,
                    self.ids[*b as usize].first_seen,
                )
            })
        });
        members
            .into_iter()
            .map(|id| {
                (
                    self.identifier(id),
                    self.observation_key(self.ids[id as usize].first_seen),
                )
            })
            .collect()
    }

    /// Visits a profile's identifiers (type, value, first sighting in µs) in no particular
    /// order, copying nothing: for tables of every identifier, where [`Resolver::identifiers`]
    /// would build and sort two strings an identifier.
    pub fn visit_identifiers(
        &self,
        profile: ProfileRef,
        mut visit: impl FnMut(&IdType, &str, i64),
    ) {
        for id in &self.profiles[profile as usize].members {
            let node = &self.ids[*id as usize];
            visit(
                &self.types[node.id_type as usize],
                self.text.get(node.value),
                node.first_seen.time_micros,
            );
        }
    }

    /// The merges that made the profile, oldest first.
    pub fn merges(&self, profile: ProfileRef) -> Vec<MergeRecord> {
        let mut out: Vec<MergeRecord> = self.profiles[profile as usize]
            .merges
            .iter()
            .map(|node| {
                let link = &self.links[node.link as usize];
                MergeRecord {
                    key: self.observation_key(link.key),
                    reason: if link.explicit {
                        MergeReason::Alias
                    } else {
                        MergeReason::SharedIdentifier
                    },
                    via: self.identifier(node.via),
                    absorbed: node
                        .absorbed
                        .iter()
                        .map(|id| self.identifier(*id))
                        .collect(),
                    absorbed_count: node.absorbed_count as usize,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.key, &a.via).cmp(&(&b.key, &b.via)));
        out
    }

    /// Merges the guards refused that involved the profile, oldest first.
    pub fn conflicts(&self, profile: ProfileRef) -> Vec<&ConflictRecord> {
        let mut out: Vec<_> = self.profiles[profile as usize].conflicts.iter().collect();
        out.sort_by(|a, b| (&a.key, &a.identifiers).cmp(&(&b.key, &b.identifiers)));
        out.dedup();
        out
    }

    /// Every live profile.
    pub fn profiles(&self) -> impl Iterator<Item = ProfileRef> + '_ {
        self.profiles
            .iter()
            .enumerate()
            .filter(|(_, p)| p.alive)
            .map(|(i, _)| i as ProfileRef)
    }

    /// The live profiles among slots `slots` (numbers below [`Resolver::profile_slots`]), for
    /// passes that visit profiles a range at a time.
    pub fn profiles_in(
        &self,
        slots: std::ops::Range<usize>,
    ) -> impl Iterator<Item = ProfileRef> + '_ {
        let end = slots.end.min(self.profiles.len());
        let start = slots.start.min(end);
        self.profiles[start..end]
            .iter()
            .enumerate()
            .filter(|(_, p)| p.alive)
            .map(move |(i, _)| (start + i) as ProfileRef)
    }

    /// How many profile slots there are, live or free: every profile number is below it.
    pub fn profile_slots(&self) -> usize {
        self.profiles.len()
    }

    pub fn profile_count(&self) -> usize {
        self.profiles.len() - self.free_profiles.len()
    }

    pub fn identifier_count(&self) -> usize {
        self.ids.len()
    }

    /// Everything needed to rebuild the resolver: each identifier with its first sighting, and
    /// each link with the identifiers it joins.
    pub fn export(&self) -> (Vec<(Identifier, ObservationKey)>, Vec<Observation>) {
        let identifiers = (0..self.ids.len() as u32)
            .map(|id| {
                (
                    self.identifier(id),
                    self.observation_key(self.ids[id as usize].first_seen),
                )
            })
            .collect();
        let links = self
            .links
            .iter()
            .map(|l| Observation {
                key: self.observation_key(l.key),
                identifiers: l.ids.iter().map(|id| self.identifier(*id)).collect(),
                explicit_merge: l.explicit,
            })
            .collect();
        (identifiers, links)
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    #[test]
    fn per_identifier_and_per_link_nodes_stay_small() {
        // What the resolver costs per customer rests on these; a field added carelessly shows
        // here before it shows as hundreds of megabytes at a million customers.
        assert_eq!(std::mem::size_of::<IdNode>(), 32);
        assert_eq!(std::mem::size_of::<LinkNode>(), 40);
    }

    #[test]
    fn profile_ids_are_the_same_in_every_version() {
        // Users store profile ids: FNV-1a of "user_id", a zero byte and "u-0", computed apart.
        let identifier = Identifier::new(IdType::UserId, "u-0");
        assert_eq!(profile_id_for(&identifier), "p_96bba09bbce8835c");
        let mut resolver = Resolver::new(IdentityRules::default());
        let key = ObservationKey {
            time_micros: 1,
            message_id: "m1".into(),
        };
        resolver.observe_parts(&key, std::slice::from_ref(&identifier), false);
        let profile = resolver.profile_of(&identifier);
        assert_eq!(
            profile.map(|p| resolver.profile_id(p)).as_deref(),
            Some("p_96bba09bbce8835c")
        );
        assert_eq!(resolver.profile_by_id("p_96bba09bbce8835c"), profile);
    }
}
