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

/// A merge as the resolver keeps it: identifiers by their index in `ids` (4 bytes instead of a
/// copy of each identifier); [`Resolver::merges`] builds the [`MergeRecord`]s.
#[derive(Debug, Clone)]
struct MergeNode {
    key: ObservationKey,
    reason: MergeReason,
    via: u32,
    /// Sorted by identifier, at most [`MAX_LISTED`].
    absorbed: Box<[u32]>,
    absorbed_count: u32,
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

#[derive(Debug, Clone)]
struct IdNode {
    identifier: Identifier,
    first_seen: ObservationKey,
    profile: u32,
}

#[derive(Debug, Clone, Default)]
struct ProfileNode {
    members: Vec<u32>,
    /// Links touching any member (applied or refused), possibly listed twice after merges.
    links: Vec<u32>,
    /// The latest key among `links`.
    max_link_key: Option<ObservationKey>,
    merges: Vec<MergeNode>,
    conflicts: Vec<ConflictRecord>,
    /// Merges of two multi-identifier profiles this profile has been through.
    profile_merges: usize,
    anchor: u32,
    alive: bool,
}

#[derive(Debug, Clone)]
struct LinkNode {
    /// Sorted by identifier order, deduplicated.
    ids: Vec<u32>,
    key: ObservationKey,
    explicit: bool,
}

enum Sighting {
    New,
    Earlier,
    Known,
}

struct ObservationRef<'a> {
    key: &'a ObservationKey,
    explicit_merge: bool,
}

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

#[derive(Debug, Clone)]
pub struct Resolver {
    rules: IdentityRules,
    ids: Vec<IdNode>,
    /// Identifier → its index in `ids`. The table holds only the index and hashes the identifier
    /// stored in `ids`, so each identifier is kept once (a map keyed by a copy cost about 80 bytes
    /// more per identifier).
    by_identifier: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Profile id (the hash of an identifier) → that identifier.
    by_hash: HashMap<u64, u32>,
    profiles: Vec<ProfileNode>,
    free_profiles: Vec<u32>,
    links: Vec<LinkNode>,
    by_link: HashMap<Vec<u32>, u32>,
}

/// The profile id of the profile anchored at `identifier`.
pub fn profile_id_for(identifier: &Identifier) -> String {
    format!("p_{:016x}", identifier_hash(identifier))
}

fn identifier_hash(identifier: &Identifier) -> u64 {
    // Stable across versions and machines: the id is stored by users.
    let mut bytes = Vec::with_capacity(identifier.value.len() + 16);
    bytes.extend_from_slice(identifier.id_type.name().as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(identifier.value.as_bytes());
    fnv1a64(&bytes)
}

/// FNV-1a: tiny, stable and good enough for ids (collisions of 64-bit ids among millions of
/// identifiers are vanishingly unlikely; `by_hash` keeps the first on a collision).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Resolver {
    pub fn new(rules: IdentityRules) -> Resolver {
        Resolver {
            rules,
            ids: Vec::new(),
            by_identifier: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            by_hash: HashMap::new(),
            profiles: Vec::new(),
            free_profiles: Vec::new(),
            links: Vec::new(),
            by_link: HashMap::new(),
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
        let observation = ObservationRef {
            key,
            explicit_merge,
        };
        let mut outcome = ObserveOutcome::default();
        let mut ids = Vec::with_capacity(identifiers.len());
        for identifier in identifiers {
            let (id, sighting) = self.sighting(identifier, observation.key);
            match sighting {
                Sighting::New => outcome.new_identifiers.push(identifier.clone()),
                Sighting::Earlier => outcome.earlier_sightings.push(identifier.clone()),
                Sighting::Known => {}
            }
            ids.push(id);
        }
        ids.sort_by(|a, b| {
            self.ids[*a as usize]
                .identifier
                .cmp(&self.ids[*b as usize].identifier)
        });
        ids.dedup();
        if ids.len() < 2 {
            return outcome;
        }
        let link = match self.by_link.get(&ids) {
            Some(&link) if self.links[link as usize].key <= *observation.key => return outcome,
            Some(&link) => {
                let node = &mut self.links[link as usize];
                node.key = observation.key.clone();
                node.explicit = observation.explicit_merge;
                link
            }
            None => {
                let link = self.links.len() as u32;
                self.links.push(LinkNode {
                    ids: ids.clone(),
                    key: observation.key.clone(),
                    explicit: observation.explicit_merge,
                });
                self.by_link.insert(ids.clone(), link);
                link
            }
        };
        outcome.new_link = true;
        let involved = self.profiles_of(&ids);
        let frontier = involved
            .iter()
            .filter_map(|p| self.profiles[*p as usize].max_link_key.as_ref())
            .max();
        let latest = frontier.is_none_or(|f| observation.key > f);
        if latest && !self.profiles_list_link(&involved, link) {
            self.apply_link(link);
        } else {
            self.rebuild_cluster(&involved, link);
            outcome.rebuilt = true;
        }
        outcome
    }

    /// Interns an identifier (a new one becomes a profile of its own) and keeps its first sighting.
    fn sighting(&mut self, identifier: &Identifier, key: &ObservationKey) -> (u32, Sighting) {
        if let Some(id) = self.index_of(identifier) {
            if *key < self.ids[id as usize].first_seen {
                self.ids[id as usize].first_seen = key.clone();
                let profile = self.ids[id as usize].profile;
                self.refresh_anchor(profile);
                return (id, Sighting::Earlier);
            }
            return (id, Sighting::Known);
        }
        let id = self.ids.len() as u32;
        let profile = self.new_profile(id);
        self.ids.push(IdNode {
            identifier: identifier.clone(),
            first_seen: key.clone(),
            profile,
        });
        let (ids, hasher) = (&self.ids, &self.hasher);
        self.by_identifier
            .insert_unique(hasher.hash_one(identifier), id, |other| {
                hasher.hash_one(&ids[*other as usize].identifier)
            });
        self.by_hash
            .entry(identifier_hash(identifier))
            .or_insert(id);
        (id, Sighting::New)
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
        let (a, b) = (&self.ids[a as usize], &self.ids[b as usize]);
        (&a.first_seen, &a.identifier).cmp(&(&b.first_seen, &b.identifier))
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
        let key = self.links[link as usize].key.clone();
        let reason = if self.links[link as usize].explicit {
            MergeReason::Alias
        } else {
            MergeReason::SharedIdentifier
        };
        let involved = self.profiles_of(&ids);
        let target = involved[0];
        for &other in &involved[1..] {
            match self.merge_refusal(target, other) {
                None => {
                    let via = ids
                        .iter()
                        .copied()
                        .find(|id| self.ids[*id as usize].profile == other)
                        .expect("the other profile holds one of the link's identifiers");
                    self.merge(target, other, key.clone(), reason, via);
                }
                Some(why) => {
                    let conflict = ConflictRecord {
                        key: key.clone(),
                        reason: why,
                        identifiers: ids
                            .iter()
                            .map(|id| self.ids[*id as usize].identifier.clone())
                            .collect(),
                    };
                    self.profiles[other as usize]
                        .conflicts
                        .push(conflict.clone());
                    self.profiles[target as usize].conflicts.push(conflict);
                }
            }
        }
        for profile in self.profiles_of(&ids) {
            let node = &mut self.profiles[profile as usize];
            node.links.push(link);
            if node.max_link_key.as_ref().is_none_or(|k| key > *k) {
                node.max_link_key = Some(key.clone());
            }
        }
    }

    /// Why `a` and `b` may not become one profile, or `None` when they may.
    fn merge_refusal(&self, a: u32, b: u32) -> Option<String> {
        let (pa, pb) = (&self.profiles[a as usize], &self.profiles[b as usize]);
        let total = pa.members.len() + pb.members.len();
        if total > self.rules.max_identifiers {
            return Some(format!(
                "the merged profile would hold {total} identifiers; the limit is {}",
                self.rules.max_identifiers
            ));
        }
        let mut counts: HashMap<&IdType, usize> = HashMap::new();
        for id in pa.members.iter().chain(&pb.members) {
            *counts
                .entry(&self.ids[*id as usize].identifier.id_type)
                .or_default() += 1;
        }
        let mut broken: Vec<(&IdType, usize)> = counts
            .into_iter()
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
        let merges = pa.profile_merges + pb.profile_merges + usize::from(both_grown);
        if both_grown && merges > self.rules.max_merges {
            return Some(format!(
                "the merged profile would have been through {merges} profile merges; the limit is {}",
                self.rules.max_merges
            ));
        }
        None
    }

    fn merge(
        &mut self,
        target: u32,
        other: u32,
        key: ObservationKey,
        reason: MergeReason,
        via: u32,
    ) {
        let absorbed = std::mem::take(&mut self.profiles[other as usize]);
        let mut listed = absorbed.members.clone();
        listed.sort_by(|a, b| {
            self.ids[*a as usize]
                .identifier
                .cmp(&self.ids[*b as usize].identifier)
        });
        listed.truncate(MAX_LISTED);
        let record = MergeNode {
            key,
            reason,
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
        let node = &mut self.profiles[target as usize];
        node.members.extend(absorbed.members);
        node.links.extend(absorbed.links);
        node.max_link_key = node.max_link_key.clone().max(absorbed.max_link_key);
        node.merges.extend(absorbed.merges);
        node.merges.push(record);
        node.conflicts.extend(absorbed.conflicts);
        node.profile_merges += absorbed.profile_merges + usize::from(both_grown);
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
        la.key.cmp(&lb.key).then_with(|| {
            let ia = la.ids.iter().map(|id| &self.ids[*id as usize].identifier);
            let ib = lb.ids.iter().map(|id| &self.ids[*id as usize].identifier);
            ia.cmp(ib)
        })
    }

    /// The index of an identifier in `ids`.
    fn index_of(&self, identifier: &Identifier) -> Option<u32> {
        self.by_identifier
            .find(self.hasher.hash_one(identifier), |id| {
                self.ids[*id as usize].identifier == *identifier
            })
            .copied()
    }

    /// The profile an identifier belongs to.
    pub fn profile_of(&self, identifier: &Identifier) -> Option<ProfileRef> {
        self.index_of(identifier)
            .map(|id| self.ids[id as usize].profile)
    }

    /// Drops the slots of profiles merged away and spare capacity: after a bulk load (every
    /// identifier starts as a profile of its own, most are merged away), most slots are dead.
    /// Profile refs handed out before are invalid afterwards.
    pub fn compact(&mut self) {
        let mut renumbered = vec![u32::MAX; self.profiles.len()];
        let mut alive = Vec::with_capacity(self.profile_count());
        for (old, node) in std::mem::take(&mut self.profiles).into_iter().enumerate() {
            if node.alive {
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
        self.by_identifier
            .shrink_to_fit(|id| self.hasher.hash_one(&self.ids[*id as usize].identifier));
        self.by_hash.shrink_to_fit();
        self.by_link.shrink_to_fit();
    }

    /// The profile a profile id names now: the profile its anchor identifier belongs to, so ids of
    /// profiles merged away keep working.
    pub fn profile_by_id(&self, profile_id: &str) -> Option<ProfileRef> {
        let hex = profile_id.strip_prefix("p_")?;
        if hex.len() != 16 {
            return None;
        }
        let hash = u64::from_str_radix(hex, 16).ok()?;
        let id = self.by_hash.get(&hash)?;
        Some(self.ids[*id as usize].profile)
    }

    pub fn profile_id(&self, profile: ProfileRef) -> String {
        let anchor = self.profiles[profile as usize].anchor;
        profile_id_for(&self.ids[anchor as usize].identifier)
    }

    /// The identifiers of a profile with their first sighting, in identifier order.
    pub fn identifiers(&self, profile: ProfileRef) -> Vec<(&Identifier, &ObservationKey)> {
        let mut out: Vec<_> = self.profiles[profile as usize]
            .members
            .iter()
            .map(|id| {
                let node = &self.ids[*id as usize];
                (&node.identifier, &node.first_seen)
            })
            .collect();
        out.sort();
        out
    }

    /// The merges that made the profile, oldest first.
    pub fn merges(&self, profile: ProfileRef) -> Vec<MergeRecord> {
        let identifier = |id: &u32| self.ids[*id as usize].identifier.clone();
        let mut out: Vec<MergeRecord> = self.profiles[profile as usize]
            .merges
            .iter()
            .map(|node| MergeRecord {
                key: node.key.clone(),
                reason: node.reason,
                via: identifier(&node.via),
                absorbed: node.absorbed.iter().map(identifier).collect(),
                absorbed_count: node.absorbed_count as usize,
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

    pub fn profile_count(&self) -> usize {
        self.profiles.len() - self.free_profiles.len()
    }

    pub fn identifier_count(&self) -> usize {
        self.ids.len()
    }

    /// Everything needed to rebuild the resolver: each identifier with its first sighting, and
    /// each link with the identifiers it joins.
    pub fn export(&self) -> (Vec<(Identifier, ObservationKey)>, Vec<Observation>) {
        let identifiers = self
            .ids
            .iter()
            .map(|n| (n.identifier.clone(), n.first_seen.clone()))
            .collect();
        let links = self
            .links
            .iter()
            .map(|l| Observation {
                key: l.key.clone(),
                identifiers: l
                    .ids
                    .iter()
                    .map(|id| self.ids[*id as usize].identifier.clone())
                    .collect(),
                explicit_merge: l.explicit,
            })
            .collect();
        (identifiers, links)
    }
}
