//! Attributing aggregates to profiles in Rust instead of joining every event in SQL.
//!
//! An event belongs to the profile of its attribution key: its `user_id` if it has one, else its
//! `anonymous_id`, else its email (see [`crate::scope::Resolved::attributed_events`]). For
//! aggregates that combine (counts, sums, maxima), grouping the events by that key first and
//! mapping the far fewer groups to profiles afterwards gives the same answer as joining each
//! event — and costs one hash lookup per group instead of a hash join over every event.

use std::hash::BuildHasher;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::{cast, concat};
use arrow::datatypes::DataType;
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use kith_lake::ExtraTable;

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
///
/// It keeps the table's own string columns and indexes their rows, rather than copying each
/// identifier and profile id into maps of strings: at hundreds of thousands of customers the
/// copies cost about 65 bytes an identifier, the row numbers about 10.
#[derive(Debug, Default)]
pub struct IdentityIndex {
    /// The `id_value` column (all batches, as one array).
    values: Option<StringArray>,
    /// The `profile_id` column, row for row with `values`.
    profile_column: Option<StringArray>,
    /// Rows of `values` by key type, hashed by value.
    by_type: [HashTable<u32>; 3],
    /// The profile number of each row of `values` (`u32::MAX` for rows of other types).
    row_profile: Vec<u32>,
    /// A row of `profile_column` holding each profile, by profile number.
    profile_rows: Vec<u32>,
    hasher: DefaultHashBuilder,
}

/// One string column of `batches` as a single `Utf8` array, or `None` when a batch lacks it or
/// it is not text.
fn text_column(batches: &[RecordBatch], name: &str) -> Option<StringArray> {
    let mut parts: Vec<ArrayRef> = Vec::with_capacity(batches.len());
    for batch in batches {
        let column = batch.column_by_name(name)?;
        parts.push(cast(column, &DataType::Utf8).ok()?);
    }
    let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
    let joined = if refs.is_empty() {
        Arc::new(StringArray::from(Vec::<&str>::new())) as ArrayRef
    } else {
        concat(&refs).ok()?
    };
    joined.as_string_opt::<i32>().cloned()
}

impl IdentityIndex {
    /// Built from the `profile_identities` table among `tables` (empty without one).
    pub fn from_tables(tables: &[ExtraTable]) -> IdentityIndex {
        let mut index = IdentityIndex::default();
        let Some(table) = tables.iter().find(|t| t.name == "profile_identities") else {
            return index;
        };
        let (Some(profiles), Some(id_types), Some(values)) = (
            text_column(&table.batches, "profile_id"),
            text_column(&table.batches, "id_type"),
            text_column(&table.batches, "id_value"),
        ) else {
            return index;
        };
        let hasher = index.hasher.clone();
        // Profile id → number while building; rows of `profiles`, hashed by the id.
        let mut numbers: HashTable<(u32, u32)> = HashTable::new();
        index.row_profile = vec![u32::MAX; values.len()];
        for row in 0..values.len() {
            if id_types.is_null(row) || values.is_null(row) || profiles.is_null(row) {
                continue;
            }
            let Some(key_type) = KeyType::parse(id_types.value(row)) else {
                continue;
            };
            let profile = profiles.value(row);
            let profile_hash = hasher.hash_one(profile);
            let next = index.profile_rows.len() as u32;
            let (_, number) = *numbers
                .entry(
                    profile_hash,
                    |(at, _)| profiles.value(*at as usize) == profile,
                    |(at, _)| hasher.hash_one(profiles.value(*at as usize)),
                )
                .or_insert((row as u32, next))
                .get();
            if number == next {
                index.profile_rows.push(row as u32);
            }
            index.row_profile[row] = number;
            let value = values.value(row);
            let table = &mut index.by_type[key_type as usize];
            match table.entry(
                hasher.hash_one(value),
                |at| values.value(*at as usize) == value,
                |at| hasher.hash_one(values.value(*at as usize)),
            ) {
                // The table lists an identifier once; were one repeated, its last row wins.
                hashbrown::hash_table::Entry::Occupied(mut seen) => *seen.get_mut() = row as u32,
                hashbrown::hash_table::Entry::Vacant(slot) => {
                    slot.insert(row as u32);
                }
            }
        }
        for table in &mut index.by_type {
            table.shrink_to_fit(|at| hasher.hash_one(values.value(*at as usize)));
        }
        index.profile_rows.shrink_to_fit();
        index.values = Some(values);
        index.profile_column = Some(profiles);
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
        let values = self.values.as_ref()?;
        self.by_type[key_type as usize]
            .find(self.hasher.hash_one(value), |at| {
                values.value(*at as usize) == value
            })
            .map(|at| self.row_profile[*at as usize])
    }

    /// How many profiles the index numbers (numbers run from 0 to this).
    pub fn profiles(&self) -> usize {
        self.profile_rows.len()
    }

    /// The profile id of a profile number below [`IdentityIndex::profiles`].
    pub(crate) fn profile_id(&self, number: u32) -> &str {
        match (&self.profile_column, self.profile_rows.get(number as usize)) {
            (Some(column), Some(row)) => column.value(*row as usize),
            _ => "",
        }
    }

    /// The profile id of an owner.
    pub fn name<'a>(&'a self, owner: &'a Owner) -> &'a str {
        match owner {
            Owner::Profile(number) => self.profile_id(*number),
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
            None => self.index.profile_id(number as u32).to_string(),
            Some(at) => format!("unattributed:{}", self.unattributed_values[at]),
        }
    }

    /// The owner of each row of `batch`, whose first two columns are an event's key (`id_type`,
    /// `id_value`, as [`OwnerNumbers::number`] takes them), into `owners` (cleared first).
    pub fn of_rows(&mut self, batch: &RecordBatch, owners: &mut Vec<Option<u32>>) {
        owners.clear();
        let id_type = crate::funnel::strings(batch.column(0).as_ref());
        let values = batch.column(1);
        let id_value = crate::funnel::strings(values.as_ref());
        for row in 0..batch.num_rows() {
            let value = values.is_valid(row).then(|| id_value(row));
            owners.push(self.number(id_type(row), value));
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
            shared: false,
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
