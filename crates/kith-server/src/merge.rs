//! Manual merges: a person confirms that two profiles are one customer (`kith profile merge A B`,
//! `POST /v1/profiles/merge`).
//!
//! The merge is written to the journal as a `Profiles Merged` event from Kith's own source, so it
//! is durable, replayed after a restart and visible in the timeline like anything else; identity
//! resolution links one identifier of each profile explicitly. The guards still apply: two
//! profiles with different user ids stay apart, the refusal says why, and a merge they refuse
//! is not written.

use std::sync::Arc;

use chrono::Utc;
use kith_core::{Event, MessageType, TypedFields};
use kith_identity::{IdType, Lookup, LookupParseError};
use kith_journal::JournalError;
use kith_profiles::{
    ChangeTally, KITH_SOURCE, LookupError, MANUAL_MERGE_EVENT, MANUAL_MERGE_ID_PREFIX, ProfileView,
};
use serde_json::json;
use thiserror::Error;

use crate::pipeline::Pipeline;

#[derive(Debug, Error)]
pub enum MergeError {
    /// The error names the lookup (cut when it is longer than any identifier).
    #[error(transparent)]
    Malformed(LookupParseError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("no profile holds {0}")]
    NotFound(String),
    #[error("the profiles were not merged: {0}")]
    Refused(String),
    #[error("the merge could not be stored: {0}")]
    Journal(#[from] JournalError),
}

/// The result of a merge that was allowed.
#[derive(Debug)]
pub struct Merged {
    /// False when both lookups already named one profile (nothing was written).
    pub changed: bool,
    pub profile: ProfileView,
}

/// A lookup as asked for (`type:value`), parsed.
struct Asked<'a> {
    text: &'a str,
    lookup: Lookup,
}

impl<'a> Asked<'a> {
    fn parse(text: &'a str) -> Result<Self, MergeError> {
        let lookup = Lookup::parse(text).map_err(MergeError::Malformed)?;
        Ok(Self { text, lookup })
    }

    /// The profile it names now.
    fn find(&self, pipeline: &Pipeline) -> Result<ProfileView, MergeError> {
        pipeline
            .profiles
            .find(&self.lookup)?
            .ok_or_else(|| MergeError::NotFound(self.text.to_string()))
    }
}

/// Merges the profiles holding `first` and `second` (`type:value` each), and returns the result.
pub async fn merge_profiles(
    pipeline: &Pipeline,
    first: &str,
    second: &str,
) -> Result<Merged, MergeError> {
    let (first, second) = (Asked::parse(first)?, Asked::parse(second)?);
    let a = first.find(pipeline)?;
    let b = second.find(pipeline)?;
    if a.profile_id == b.profile_id {
        return Ok(Merged {
            changed: false,
            profile: a,
        });
    }
    // One identifier of each profile is enough to link them; the strongest reads best in the
    // merge record.
    let strongest = |view: &ProfileView| {
        view.identifiers
            .iter()
            .min_by_key(|i| IdType::from_name(&i.id_type))
            .map(|i| format!("{}:{}", i.id_type, i.value))
    };
    let (Some(a_id), Some(b_id)) = (strongest(&a), strongest(&b)) else {
        return Err(MergeError::Refused(
            "a profile without identifiers cannot be merged".into(),
        ));
    };
    // A merge the guards refuse now is not written: the `Profiles Merged` events in the table
    // are the merges made. Should the profiles change before the event is resolved, identity
    // resolution refuses it then, and the event stays as the record of what was asked.
    if let Some(why) = pipeline
        .profiles
        .merge_refusal(&first.lookup, &second.lookup)?
    {
        return Err(MergeError::Refused(why));
    }
    let now = Utc::now();
    let message_id = format!("{MANUAL_MERGE_ID_PREFIX}{}", uuid::Uuid::new_v4());
    let event = Event {
        message_id: message_id.clone(),
        kind: MessageType::Track,
        event: Some(MANUAL_MERGE_EVENT.to_string()),
        user_id: None,
        anonymous_id: None,
        group_id: None,
        previous_id: None,
        source: KITH_SOURCE.to_string(),
        timestamp: now,
        original_timestamp: None,
        sent_at: None,
        received_at: now,
        properties: Some(
            json!({
                "identifiers": [a_id, b_id],
                "profiles": [a.profile_id, b.profile_id],
                "requested": [first.text, second.text],
            })
            .to_string(),
        ),
        context: None,
        traits: None,
        integrations: None,
        extra: None,
        typed: TypedFields::default(),
    };
    let tally = Arc::new(ChangeTally::default());
    let written = pipeline.write(vec![event], Some(&tally)).await?;
    if let Some(seq) = written.last_seq() {
        pipeline.wait_for_profiles(seq).await;
    }
    let profile = first.find(pipeline)?;
    if tally.counts().merged == 1 {
        return Ok(Merged {
            changed: true,
            profile,
        });
    }
    let other = second.find(pipeline)?;
    // A merge asked for again is the same link: the refusal on record is the first one's.
    let conflicts: Vec<_> = profile.conflicts.iter().chain(&other.conflicts).collect();
    let reason = conflicts
        .iter()
        .find(|c| c.message_id == message_id)
        .or_else(|| {
            conflicts
                .iter()
                .rev()
                .find(|c| c.identifiers.contains(&a_id) && c.identifiers.contains(&b_id))
        })
        .map(|c| c.reason.clone())
        .unwrap_or_else(|| "identity resolution did not join them".into());
    Err(MergeError::Refused(reason))
}
