//! Likely duplicates: profiles the deterministic rules keep apart that probably are one person
//! (the same name in the same city, a mailbox name at two domains, the same phone digits under
//! another name, a merge the guards refused …). They are reported with a score and the evidence
//! for a person to confirm with `kith profile merge`; nothing here merges anything.
//!
//! Pairs are only compared within blocks that share a key (normalised name, email local part,
//! phone digits, a refused merge), so the work grows with the number of profiles, not its square.
//! Each piece of evidence has a weight; the score combines them as independent signals,
//! `1 − Π(1 − wᵢ)`, so more evidence always raises it and it never passes 1. Evidence that only
//! repeats another (mailboxes alike because they spell the same name) is left out, and an
//! agreement counts for more the fewer profiles share it (the same name in a city where no one
//! else has it), as record linkage weighs agreement on rare values.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use kith_identity::fold_accent;
use serde::Serialize;
use serde_json::Value;

use crate::view::ProfileView;

/// One pair for a person to look at.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DuplicateCandidate {
    pub score: f64,
    pub first: CandidateProfile,
    pub second: CandidateProfile,
    /// Why, in words, strongest first.
    pub evidence: Vec<String>,
}

/// The best candidates of a search, and how many there were in all.
#[derive(Debug, Clone, PartialEq)]
pub struct Duplicates {
    /// At most the number asked for, best first.
    pub candidates: Vec<DuplicateCandidate>,
    /// Every candidate scoring at least the bar.
    pub total: usize,
}

/// What a person needs to judge a profile at a glance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CandidateProfile {
    pub profile_id: String,
    pub name: Option<String>,
    pub identifiers: Vec<String>,
}

const PHONE_DIGITS: usize = 10;

/// Blocks larger than this are too common to say anything (a name like "Maria").
const MAX_BLOCK: usize = 50;

/// What pairs are compared on, taken from a profile's view (which is then no longer needed:
/// all views at once cost gigabytes at hundreds of thousands of profiles).
struct Features {
    profile_id: String,
    /// Identifiers other than anonymous ids, as `type:value`: what a candidate shows.
    shown_identifiers: Vec<String>,
    name: Option<String>,
    /// Normalised name tokens, sorted.
    name_key: Option<String>,
    name_tokens: usize,
    /// (normalised local part, domain, full address).
    emails: Vec<(String, String, String)>,
    /// The national number (last ten digits) of each phone: the same number saved with another
    /// country code matches, two numbers that differ in area code do not.
    phone_digits: Vec<String>,
    user_ids: Vec<String>,
    /// Normalised city, from `city` or `ciudad`.
    city: Option<String>,
    /// The city as the profile has it, for the evidence.
    city_shown: Option<String>,
}

/// `Ana  LÓPEZ` and `lopez ana` → `ana lopez`.
fn name_key(name: &str) -> (String, usize) {
    let cleaned: String = name
        .chars()
        .flat_map(char::to_lowercase)
        .map(fold_accent)
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    let mut tokens: Vec<&str> = cleaned.split_whitespace().collect();
    tokens.sort_unstable();
    (tokens.join(" "), tokens.len())
}

fn trait_text(view: &ProfileView, name: &str) -> Option<String> {
    match view.traits.get(name)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

/// The person's name from the usual traits.
fn display_name(view: &ProfileView) -> Option<String> {
    for whole in ["name", "full_name", "fullName", "nombre", "nombre_completo"] {
        if let Some(name) = trait_text(view, whole) {
            return Some(name);
        }
    }
    for (first, last) in [
        ("first_name", "last_name"),
        ("firstName", "lastName"),
        ("nombre", "apellido"),
    ] {
        let parts: Vec<String> = [first, last]
            .iter()
            .filter_map(|t| trait_text(view, t))
            .collect();
        if !parts.is_empty() {
            return Some(parts.join(" "));
        }
    }
    None
}

fn normalised_city(city: &str) -> String {
    name_key(city).0
}

/// Two different mailbox names that are probably one person's: close in spelling, and not told
/// apart by their numbers (`ana.lopez1745` and `ana.lopez1991` are two people; `analopez` and
/// `ana.lopez1745` may be one).
fn similar_mailboxes(a: &str, b: &str) -> Option<f64> {
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let (da, db) = (digits(a), digits(b));
    if !da.is_empty() && !db.is_empty() && da != db {
        return None;
    }
    let letters = |s: &str| {
        s.chars()
            .filter(|c| !c.is_ascii_digit())
            .collect::<String>()
    };
    let similarity = strsim::jaro_winkler(&letters(a), &letters(b));
    (similarity >= 0.9).then_some(similarity)
}

/// `Ana.Lopez+promo` → `analopez`: the parts of a local part people vary.
fn local_key(local: &str) -> String {
    let base = local.split('+').next().unwrap_or(local);
    base.chars()
        .filter(|c| c.is_alphanumeric())
        .map(fold_accent)
        .collect()
}

fn features(view: &ProfileView) -> Features {
    let name = display_name(view);
    let (name_key, name_tokens) = match &name {
        Some(n) => {
            let (key, tokens) = name_key(n);
            (Some(key).filter(|k| !k.is_empty()), tokens)
        }
        None => (None, 0),
    };
    let mut emails = Vec::new();
    let mut phone_digits = Vec::new();
    let mut user_ids = Vec::new();
    for identifier in &view.identifiers {
        match identifier.id_type.as_str() {
            "email" => {
                if let Some((local, domain)) = identifier.value.split_once('@') {
                    emails.push((
                        local_key(local),
                        domain.to_string(),
                        identifier.value.clone(),
                    ));
                }
            }
            "phone" => {
                let digits: String = identifier
                    .value
                    .chars()
                    .filter(char::is_ascii_digit)
                    .collect();
                if digits.len() >= PHONE_DIGITS {
                    phone_digits.push(digits[digits.len() - PHONE_DIGITS..].to_string());
                }
            }
            "user_id" => user_ids.push(identifier.value.clone()),
            _ => {}
        }
    }
    let city_shown = trait_text(view, "city").or_else(|| trait_text(view, "ciudad"));
    let city = city_shown
        .as_deref()
        .map(normalised_city)
        .filter(|c| !c.is_empty());
    Features {
        profile_id: view.profile_id.clone(),
        shown_identifiers: view
            .identifiers
            .iter()
            .filter(|i| i.id_type != "anonymous_id")
            .map(|i| format!("{}:{}", i.id_type, i.value))
            .collect(),
        city,
        city_shown,
        name,
        name_key,
        name_tokens,
        emails,
        phone_digits,
        user_ids,
    }
}

/// Whether an address's mailbox name is the person's name written out (`jose.flores1133@`,
/// `joseflores@` for José Flores): then its likeness to another such mailbox says nothing the
/// names did not. Each word of the name must start a run of letters of the mailbox or follow
/// another word there, so `juliana.lima` does not spell Ana Li.
fn spells_name(address: &str, name_key: &str) -> bool {
    let local: String = address
        .split('@')
        .next()
        .unwrap_or(address)
        .chars()
        .flat_map(char::to_lowercase)
        .map(fold_accent)
        .collect();
    let words: Vec<&str> = name_key.split(' ').filter(|w| !w.is_empty()).collect();
    let mut spelt = vec![false; words.len()];
    for run in local.split(|c: char| !c.is_alphabetic()) {
        let mut rest = run;
        while let Some((index, word)) = words
            .iter()
            .enumerate()
            .find(|(index, word)| !spelt[*index] && rest.starts_with(**word))
        {
            spelt[index] = true;
            rest = &rest[word.len()..];
        }
    }
    !words.is_empty() && spelt.iter().all(|&s| s)
}

/// How many profiles have each name, and each name in each city (normalised): a shared name
/// says much when no one else has it, little when many do, as record linkage weighs agreement
/// on a rare value above agreement on a common one.
#[derive(Default)]
struct Namesakes<'f> {
    by_name: HashMap<&'f str, usize>,
    by_name_and_city: HashMap<(&'f str, &'f str), usize>,
}

impl<'f> Namesakes<'f> {
    fn count(features: &'f [Features]) -> Namesakes<'f> {
        let mut namesakes = Namesakes::default();
        for f in features {
            if let Some(name) = &f.name_key {
                *namesakes.by_name.entry(name.as_str()).or_default() += 1;
                if let Some(city) = &f.city {
                    *namesakes
                        .by_name_and_city
                        .entry((name.as_str(), city.as_str()))
                        .or_default() += 1;
                }
            }
        }
        namesakes
    }
}

/// "1 other profile", "3 other profiles".
fn others(count: usize) -> String {
    format!("{count} other profile{}", if count == 1 { "" } else { "s" })
}

/// The evidence of one name on two profiles. Two profiles of a name no one else has weigh 0.4
/// (0.2 for a single word); each further profile of that name is another person either could
/// be, and divides it. In the same city, what counts is who else of that name lives there: the
/// only two weigh 0.61 (a CRM contact and the one account of its name in its city are likely
/// one person), and half that when both are accounts (two sign-ups of one name in one city are
/// more often two people than one who signed up twice).
fn same_name_evidence(
    a: &Features,
    b: &Features,
    name: &str,
    namesakes: &Namesakes,
) -> (f64, String) {
    let (na, nb) = (
        a.name.as_deref().unwrap_or(""),
        b.name.as_deref().unwrap_or(""),
    );
    let full = a.name_tokens >= 2;
    let city = match (&a.city, &b.city) {
        (Some(ca), Some(cb)) if ca == cb => Some(ca.as_str()),
        _ => None,
    };
    let Some(city) = city else {
        let sharing = namesakes.by_name.get(name).copied().unwrap_or(2).max(2);
        let mut weight = if full { 0.4 } else { 0.2 } * 2.0 / sharing as f64;
        let mut text = if sharing == 2 {
            format!("same name: `{na}` and `{nb}`")
        } else {
            let more = sharing - 2;
            format!(
                "same name: `{na}` and `{nb}`, as {} {}",
                others(more),
                if more == 1 { "has" } else { "have" }
            )
        };
        // Two cities are more often two people of one name than one who moved.
        if let (Some(ca), Some(cb)) = (&a.city_shown, &b.city_shown) {
            weight /= 2.0;
            text.push_str(&format!(", but in two cities ({ca} and {cb})"));
        }
        return (weight, text);
    };
    let shown = a.city_shown.as_deref().unwrap_or(city);
    let sharing = namesakes
        .by_name_and_city
        .get(&(name, city))
        .copied()
        .unwrap_or(2)
        .max(2);
    let one_account = a.user_ids.is_empty() || b.user_ids.is_empty();
    let weight =
        if full { 0.61 } else { 0.3 } * 2.0 / sharing as f64 * if one_account { 1.0 } else { 0.5 };
    let text = if sharing == 2 {
        format!("same name, `{na}`, and city, {shown}, where no other profile there has that name")
    } else {
        format!(
            "same name, `{na}`, and city, {shown}, as {} there",
            others(sharing - 2)
        )
    };
    (weight, text)
}

/// Scores one pair; `refused` is the reason of a merge between them the guards refused.
fn score(
    a: &Features,
    b: &Features,
    refused: Option<&str>,
    namesakes: &Namesakes<'_>,
) -> (f64, Vec<(f64, String)>) {
    let mut evidence: Vec<(f64, String)> = Vec::new();
    let same_name = a.name_key.is_some() && a.name_key == b.name_key;
    if let (Some(ka), Some(kb)) = (&a.name_key, &b.name_key) {
        let (na, nb) = (
            a.name.as_deref().unwrap_or(""),
            b.name.as_deref().unwrap_or(""),
        );
        if ka == kb {
            evidence.push(same_name_evidence(a, b, ka, namesakes));
        } else {
            let similarity = strsim::jaro_winkler(ka, kb);
            if similarity >= 0.9 && a.name_tokens.min(b.name_tokens) >= 2 {
                evidence.push((
                    0.35,
                    format!("similar names: `{na}` and `{nb}` ({similarity:.2})"),
                ));
            }
        }
    }
    // A mailbox that spells a name several profiles have is one any of them might hold: the
    // same one twice weighs as the name does, divided among them.
    let shared_name = a.name_key.as_deref().filter(|_| same_name);
    let name_sharing = shared_name
        .and_then(|name| namesakes.by_name.get(name))
        .copied()
        .unwrap_or(2)
        .max(2);
    let same_mailbox = |address: &str| {
        if shared_name.is_some_and(|name| spells_name(address, name)) {
            0.5 * 2.0 / name_sharing as f64
        } else {
            0.5
        }
    };
    let mut best_email: Option<(f64, String)> = None;
    for (la, da, ea) in &a.emails {
        for (lb, db, eb) in &b.emails {
            if la.len() < 3 || lb.len() < 3 {
                continue;
            }
            let found = if la == lb && da != db {
                Some((
                    same_mailbox(ea),
                    format!("the same mailbox name at two domains: {ea} and {eb}"),
                ))
            } else if la == lb {
                Some((
                    same_mailbox(ea),
                    format!("the same address but for dots or a +tag: {ea} and {eb}"),
                ))
            } else if shared_name.is_some_and(|name| spells_name(ea, name) && spells_name(eb, name))
            {
                // Namesakes' mailboxes are alike because their names are: counted once, as
                // the name (counted twice, the demo world's 5,000 customers gave 1,923 pairs at
                // 0.5 or more, one in ten of them one person).
                None
            } else {
                similar_mailboxes(la, lb).map(|similarity| {
                    (
                        0.3,
                        format!("similar email addresses: {ea} and {eb} ({similarity:.2})"),
                    )
                })
            };
            if let Some(found) = found
                && best_email.as_ref().is_none_or(|b| b.0 < found.0)
            {
                best_email = Some(found);
            }
        }
    }
    evidence.extend(best_email);
    // The same name and city are weighed together above.
    if let (Some(ca), Some(cb)) = (&a.city, &b.city)
        && !evidence.is_empty()
        && !same_name
        && ca == cb
    {
        evidence.push((
            0.15,
            format!("the same city: {}", a.city_shown.as_deref().unwrap_or(ca)),
        ));
    }
    if let Some(digits) = a.phone_digits.iter().find(|d| b.phone_digits.contains(d)) {
        let names_differ = a.name_key.is_some() && b.name_key.is_some() && a.name_key != b.name_key;
        let note = if names_differ {
            " under different names"
        } else {
            ""
        };
        evidence.push((0.6, format!("phone numbers ending in {digits}{note}")));
    }
    if let Some(reason) = refused {
        evidence.push((
            0.4,
            format!("an event joined them but the merge was refused: {reason}"),
        ));
    }
    if evidence.is_empty() {
        return (0.0, evidence);
    }
    if !a.user_ids.is_empty() && !b.user_ids.is_empty() {
        evidence.push((
            0.0,
            "both have a user id: two accounts, which merge only where [identity.limits] user_id allows two"
                .into(),
        ));
    }
    evidence.sort_by(|x, y| y.0.total_cmp(&x.0));
    let remaining: f64 = evidence.iter().map(|(w, _)| 1.0 - w).product();
    (1.0 - remaining, evidence)
}

fn candidate_profile(f: &Features) -> CandidateProfile {
    CandidateProfile {
        profile_id: f.profile_id.clone(),
        name: f.name.clone(),
        identifiers: f.shown_identifiers.clone(),
    }
}

/// The likely duplicates among `views` scoring at least `min_score`, best first.
pub fn find_duplicates(views: &[ProfileView], min_score: f64) -> Vec<DuplicateCandidate> {
    let mut finder = DuplicateFinder::default();
    for view in views {
        finder.add(view);
    }
    finder
        .finish(min_score, usize::MAX, |visit| {
            for view in views {
                for identifier in &view.identifiers {
                    visit(&view.profile_id, &identifier.id_type, &identifier.value);
                }
            }
        })
        .candidates
}

/// Finds likely duplicates from profiles' views seen one at a time ([`DuplicateFinder::add`]),
/// keeping only what pairs are compared on, so no caller needs every view at once.
#[derive(Default)]
pub struct DuplicateFinder {
    features: Vec<Features>,
    /// Each merge the guards refused: the profile (by position) that records it, an identifier
    /// the event named (`type:value`), and the reason.
    refusals: Vec<(usize, String, String)>,
}

impl DuplicateFinder {
    /// Takes in one profile.
    pub fn add(&mut self, view: &ProfileView) {
        let index = self.features.len();
        for conflict in &view.conflicts {
            for identifier in &conflict.identifiers {
                self.refusals
                    .push((index, identifier.clone(), conflict.reason.clone()));
            }
        }
        self.features.push(features(view));
    }

    /// The best `limit` candidates scoring at least `min_score`, best first, and how many
    /// scored so. `identities` visits every identifier with its profile (`profile_id`, type,
    /// value), to find which profiles the identifiers of refused merges belong to now.
    pub fn finish(
        self,
        min_score: f64,
        limit: usize,
        identities: impl FnOnce(&mut dyn FnMut(&str, &str, &str)),
    ) -> Duplicates {
        let features = self.features;
        let named: HashSet<&str> = self.refusals.iter().map(|(_, id, _)| id.as_str()).collect();
        let mut by_identifier: HashMap<String, usize> = HashMap::new();
        if !named.is_empty() {
            let position: HashMap<&str, usize> = features
                .iter()
                .enumerate()
                .map(|(i, f)| (f.profile_id.as_str(), i))
                .collect();
            let mut key = String::new();
            identities(&mut |profile_id, id_type, value| {
                key.clear();
                key.push_str(id_type);
                key.push(':');
                key.push_str(value);
                if named.contains(key.as_str())
                    && let Some(&index) = position.get(profile_id)
                {
                    by_identifier.insert(key.clone(), index);
                }
            });
        }
        let mut blocks: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, f) in features.iter().enumerate() {
            if let Some(key) = f.name_key.as_ref().filter(|_| f.name_tokens >= 2) {
                blocks.entry(format!("name:{key}")).or_default().push(index);
            }
            for (local, _, _) in &f.emails {
                if local.len() >= 3 {
                    blocks
                        .entry(format!("local:{local}"))
                        .or_default()
                        .push(index);
                }
            }
            for digits in &f.phone_digits {
                blocks
                    .entry(format!("phone:{digits}"))
                    .or_default()
                    .push(index);
            }
        }
        let mut pairs: BTreeSet<(usize, usize)> = BTreeSet::new();
        for members in blocks.values() {
            if members.len() < 2 || members.len() > MAX_BLOCK {
                continue;
            }
            for (i, a) in members.iter().enumerate() {
                for b in &members[i + 1..] {
                    if a != b {
                        pairs.insert((*a.min(b), *a.max(b)));
                    }
                }
            }
        }
        // Refused merges name identifiers of both profiles.
        let mut refused: BTreeMap<(usize, usize), String> = BTreeMap::new();
        for (index, identifier, reason) in &self.refusals {
            if let Some(&other) = by_identifier.get(identifier)
                && other != *index
            {
                let pair = (*index.min(&other), *index.max(&other));
                pairs.insert(pair);
                refused.entry(pair).or_insert_with(|| reason.clone());
            }
        }
        // Every pair is scored, but only the best `limit` are built with their profiles and
        // evidence: at a low bar there are hundreds of thousands of candidates, and a caller
        // shows a page of them.
        let refusal = |a: usize, b: usize| refused.get(&(a, b)).map(String::as_str);
        let namesakes = Namesakes::count(&features);
        let mut scored: Vec<(f64, usize, usize)> = pairs
            .into_iter()
            .filter_map(|(a, b)| {
                let (score, _) = score(&features[a], &features[b], refusal(a, b), &namesakes);
                (score >= min_score && score > 0.0).then_some((
                    (score * 1000.0).round() / 1000.0,
                    a,
                    b,
                ))
            })
            .collect();
        let total = scored.len();
        let best_first = |x: &(f64, usize, usize), y: &(f64, usize, usize)| {
            y.0.total_cmp(&x.0)
                .then_with(|| features[x.1].profile_id.cmp(&features[y.1].profile_id))
                .then_with(|| features[x.2].profile_id.cmp(&features[y.2].profile_id))
        };
        if scored.len() > limit {
            scored.select_nth_unstable_by(limit, best_first);
            scored.truncate(limit);
        }
        scored.sort_by(best_first);
        let candidates = scored
            .into_iter()
            .map(|(rounded, a, b)| {
                let (_, evidence) = score(&features[a], &features[b], refusal(a, b), &namesakes);
                DuplicateCandidate {
                    score: rounded,
                    first: candidate_profile(&features[a]),
                    second: candidate_profile(&features[b]),
                    evidence: evidence.into_iter().map(|(_, text)| text).collect(),
                }
            })
            .collect();
        Duplicates { candidates, total }
    }
}

#[cfg(test)]
mod tests {
    use super::spells_name;

    #[test]
    fn a_mailbox_spells_a_name_when_its_words_start_runs_of_letters() {
        assert!(spells_name("jose.flores1133@gmail.com", "flores jose"));
        assert!(spells_name("joseflores@empresa.mx", "flores jose"));
        assert!(spells_name("sofia.lopez.t@x.mx", "lopez sofia"));
        assert!(spells_name("José.Flores@x.mx", "flores jose"));
        // Inside another word, or only an initial: not the name written out.
        assert!(!spells_name("juliana.lima@x.mx", "ana li"));
        assert!(!spells_name("jflores@x.mx", "flores jose"));
        assert!(!spells_name("lagatita@x.mx", "gil renata"));
        assert!(!spells_name("x@y.mx", ""));
    }
}
