//! Identity resolution for Kith: which identifiers (user ids, anonymous ids, emails, phones,
//! external ids) belong to one person.
//!
//! - [`normalize`]: turning raw values into identities, refusing placeholders and junk;
//! - [`rules`]: the guards against over-merging;
//! - [`resolver`]: the identity graph, exact under any arrival order.
//!
//! Pure computation: no I/O. The server feeds it observations and persists what it exports.

pub mod identifier;
pub mod normalize;
pub mod resolver;
pub mod rules;
mod text;

pub use identifier::{IdType, Identifier, Lookup, LookupParseError, excerpt};
pub use normalize::{
    Normalizer, NotAnIdentity, UnknownRegion, fold_accent, why_not_an_external_type,
};
pub use resolver::{
    ConflictRecord, MergeReason, MergeRecord, Observation, ObservationKey, ObserveOutcome,
    ProfileRef, Resolver, profile_id_for,
};
pub use rules::IdentityRules;

#[cfg(test)]
mod tests;
