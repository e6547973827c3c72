//! Attributing aggregates to profiles in Rust instead of joining every event in SQL.
//!
//! An event belongs to the profile of its attribution key: its `user_id` if it has one, else its
//! `anonymous_id`, else its email (see [`crate::scope::Resolved::attributed_events`]). For
//! aggregates that combine (counts, sums, maxima), grouping the events by that key first and
//! mapping the far fewer groups to profiles afterwards gives the same answer as joining each
//! event — and costs one hash lookup per group instead of a hash join over every event.

use hashbrown::HashMap;
use kith_lake::ExtraTable;

use crate::funnel::strings;

/// Which identifier an event is attributed by (the order of preference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    UserId,
    AnonymousId,
    Email,
}

impl KeyType {
    pub fn parse(name: &str) -> Option<KeyType> {
        match name {
            "user_id" => Some(KeyType::UserId),
            "anonymous_id" => Some(KeyType::AnonymousId),
            "email" => Some(KeyType::Email),
            _ => None,
        }
    }
}

/// Where a group of events belongs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A profile, by its index in [`IdentityIndex::profile_ids`].
    Profile(u32),
    /// No profile holds the identifier yet: counted under `unattributed:{value}`, as the SQL
    /// attribution does.
    Unattributed(String),
}

/// The current identifier → profile mapping, from the `profile_identities` table.
#[derive(Debug, Default)]
pub struct IdentityIndex {
    by_type: [HashMap<String, u32>; 3],
    profile_ids: Vec<String>,
}

impl IdentityIndex {
    /// Built from the `profile_identities` table among `tables` (empty without one).
    pub fn from_tables(tables: &[ExtraTable]) -> IdentityIndex {
        let mut index = IdentityIndex::default();
        let Some(table) = tables.iter().find(|t| t.name == "profile_identities") else {
            return index;
        };
        let mut profile_numbers: HashMap<String, u32> = HashMap::new();
        for batch in &table.batches {
            let (Some(profile), Some(id_type), Some(id_value)) = (
                batch.column_by_name("profile_id"),
                batch.column_by_name("id_type"),
                batch.column_by_name("id_value"),
            ) else {
                continue;
            };
            let (profile, id_type, id_value) = (
                strings(profile.as_ref()),
                strings(id_type.as_ref()),
                strings(id_value.as_ref()),
            );
            for row in 0..batch.num_rows() {
                let Some(key_type) = KeyType::parse(id_type(row)) else {
                    continue;
                };
                let next = index.profile_ids.len() as u32;
                let number = *profile_numbers
                    .entry_ref(profile(row))
                    .or_insert_with(|| next);
                if number == next {
                    index.profile_ids.push(profile(row).to_string());
                }
                index.by_type[key_type as usize].insert(id_value(row).to_string(), number);
            }
        }
        index
    }

    /// The owner of events attributed by `key_type` = `value`; `None` for an email no profile
    /// holds (such records are left out, as in SQL).
    pub fn owner(&self, key_type: KeyType, value: &str) -> Option<Owner> {
        match self.profile_number(key_type, value) {
            Some(number) => Some(Owner::Profile(number)),
            None if key_type == KeyType::Email => None,
            None => Some(Owner::Unattributed(format!("unattributed:{value}"))),
        }
    }

    /// The number of the profile holding `key_type` = `value`, if one does; without building an
    /// owner (callers that see every event, not one group per key, avoid the allocation).
    pub fn profile_number(&self, key_type: KeyType, value: &str) -> Option<u32> {
        self.by_type[key_type as usize].get(value).copied()
    }

    /// How many profiles the index numbers (numbers run from 0 to this).
    pub fn profiles(&self) -> usize {
        self.profile_ids.len()
    }

    /// The profile id of an owner.
    pub fn name<'a>(&'a self, owner: &'a Owner) -> &'a str {
        match owner {
            Owner::Profile(number) => &self.profile_ids[*number as usize],
            Owner::Unattributed(name) => name,
        }
    }
}

/// Numbers for the owners of single events, for analyses that gather every event of a profile
/// (funnels, paths) rather than aggregates per key: a profile keeps its number in the index,
/// and an identifier no profile holds is numbered after them, as first seen (it counts as
/// `unattributed:{identifier}`, as in SQL). No allocation for events of known profiles.
pub struct OwnerNumbers<'a> {
    index: &'a IdentityIndex,
    unattributed: HashMap<String, u32>,
    /// The unattributed identifiers by number (less the profiles'), for [`OwnerNumbers::name`].
    unattributed_values: Vec<String>,
}

impl<'a> OwnerNumbers<'a> {
    pub fn new(index: &'a IdentityIndex) -> Self {
        OwnerNumbers {
            index,
            unattributed: HashMap::new(),
            unattributed_values: Vec::new(),
        }
    }

    /// A bound on the numbers given out so far: every one is below it.
    pub fn bound(&self) -> usize {
        self.index.profiles() + self.unattributed_values.len()
    }

    /// The profile id an owner's number stands for (`unattributed:{identifier}` for an
    /// identifier no profile holds).
    pub fn name(&self, number: u32) -> String {
        let number = number as usize;
        match number.checked_sub(self.index.profiles()) {
            None => self.index.profile_ids[number].clone(),
            Some(at) => format!("unattributed:{}", self.unattributed_values[at]),
        }
    }

    /// The number of the owner of an event keyed `id_type` = `id_value` (the columns of
    /// [`crate::scope::Resolved::keyed_events`]); `None` for an event left out: no identifier at
    /// all, or an email no profile holds.
    pub fn number(&mut self, id_type: &str, id_value: Option<&str>) -> Option<u32> {
        let (key_type, value) = (KeyType::parse(id_type)?, id_value?);
        if let Some(number) = self.index.profile_number(key_type, value) {
            return Some(number);
        }
        if key_type == KeyType::Email {
            return None;
        }
        let next = self.bound() as u32;
        let number = *self.unattributed.entry_ref(value).or_insert(next);
        if number == next {
            self.unattributed_values.push(value.to_string());
        }
        Some(number)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn identities(rows: &[(&str, &str, &str)]) -> ExtraTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("profile_id", DataType::Utf8, false),
            Field::new("id_type", DataType::Utf8, false),
            Field::new("id_value", DataType::Utf8, false),
        ]));
        let column = |i: usize| {
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| [r.0, r.1, r.2][i]),
            )) as arrow::array::ArrayRef
        };
        ExtraTable {
            name: "profile_identities".into(),
            schema: schema.clone(),
            batches: vec![
                RecordBatch::try_new(schema, vec![column(0), column(1), column(2)]).unwrap(),
            ],
        }
    }

    #[test]
    fn keys_lead_to_profiles_merged_ones_included_and_unknown_ones_as_sql_counts_them() {
        let index = IdentityIndex::from_tables(&[identities(&[
            ("p_a", "user_id", "u1"),
            ("p_a", "anonymous_id", "anon-1"),
            ("p_a", "email", "ana@example.com"),
            ("p_b", "user_id", "u2"),
            ("p_b", "phone", "+525512345678"),
        ])]);
        let name = |t, v| index.owner(t, v).map(|o| index.name(&o).to_string());
        assert_eq!(name(KeyType::UserId, "u1").as_deref(), Some("p_a"));
        // Browsing before sign-up counts for the same person.
        assert_eq!(name(KeyType::AnonymousId, "anon-1").as_deref(), Some("p_a"));
        assert_eq!(
            name(KeyType::Email, "ana@example.com").as_deref(),
            Some("p_a")
        );
        assert_eq!(name(KeyType::UserId, "u2").as_deref(), Some("p_b"));
        assert_eq!(
            name(KeyType::UserId, "u9").as_deref(),
            Some("unattributed:u9")
        );
        assert_eq!(name(KeyType::Email, "nobody@example.com"), None);
        assert_eq!(
            index.owner(KeyType::UserId, "u1"),
            index.owner(KeyType::AnonymousId, "anon-1")
        );
        assert!(
            IdentityIndex::from_tables(&[])
                .owner(KeyType::Email, "x")
                .is_none()
        );
    }
}
