//! The guards that keep one bad identifier from merging people who are not the same person.

use std::collections::HashMap;

use crate::identifier::IdType;

#[derive(Debug, Clone)]
pub struct IdentityRules {
    /// Most identifiers of a type one profile may hold. A merge that would exceed a limit (two
    /// different `user_id`s, say) is not made; the conflict is recorded instead.
    pub limits: HashMap<IdType, usize>,
    /// Limit for identifier types not listed in `limits` (external ids).
    pub default_limit: usize,
    /// Most identifiers of all types one profile may hold.
    pub max_identifiers: usize,
    /// Most merges of two multi-identifier profiles one profile may take part in; absorbing a lone
    /// new identifier is growth, bounded by `max_identifiers` instead.
    pub max_merges: usize,
}

impl Default for IdentityRules {
    fn default() -> Self {
        IdentityRules {
            limits: HashMap::from([
                (IdType::UserId, 1),
                (IdType::Email, 5),
                (IdType::Phone, 5),
                (IdType::AnonymousId, 100),
            ]),
            default_limit: 3,
            max_identifiers: 150,
            max_merges: 50,
        }
    }
}

impl IdentityRules {
    pub fn limit(&self, id_type: &IdType) -> usize {
        self.limits
            .get(id_type)
            .copied()
            .unwrap_or(self.default_limit)
    }
}
