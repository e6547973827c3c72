//! The resolver's strings (identifier values, message ids) in one growing buffer.
//!
//! A resolver holds two or three strings per identifier for as long as the server runs. Kept as
//! `String`s each costs 24 bytes of header plus an allocation rounded up to the allocator's size
//! class; here each is 8 bytes (a [`Text`]) plus its bytes, with nothing per allocation. Strings
//! are never removed: a replaced string (a first sighting moved earlier) stays as garbage, which
//! is bounded by the observations that moved it.

use std::fmt::Write;

/// Where a string lies in a [`TextArena`]: its start (high 40 bits) and length (low 24 bits).
/// A string of [`LONG`] bytes or more is stored after its length written in [`LENGTH_DIGITS`]
/// decimal digits, and its `Text` says [`LONG`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Text(u64);

const LENGTH_BITS: u32 = 24;
/// The length field's marker for a long string (16 MiB or more).
const LONG: u64 = (1 << LENGTH_BITS) - 1;
const LENGTH_DIGITS: usize = 20;

/// Append-only storage for strings; `Text`s index it. The start of a string has 40 bits (1 TiB),
/// far beyond what one machine's memory holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct TextArena {
    text: String,
    /// The string stored last, returned again for the same value: the identifiers of one message
    /// share its message id.
    last: Option<Text>,
}

impl TextArena {
    /// Stores `value` (or finds it, when it is the string stored last).
    pub(crate) fn push(&mut self, value: &str) -> Text {
        if let Some(last) = self.last
            && self.get(last) == value
        {
            return last;
        }
        let start = self.text.len() as u64;
        let text = if (value.len() as u64) < LONG {
            Text((start << LENGTH_BITS) | value.len() as u64)
        } else {
            // Writing to a `String` cannot fail.
            let _ = write!(self.text, "{:0width$}", value.len(), width = LENGTH_DIGITS);
            Text((start << LENGTH_BITS) | LONG)
        };
        self.text.push_str(value);
        self.last = Some(text);
        text
    }

    /// The string `text` names (empty for a `Text` from another arena that lies outside this one).
    pub(crate) fn get(&self, text: Text) -> &str {
        let start = (text.0 >> LENGTH_BITS) as usize;
        let length = text.0 & LONG;
        let (start, length) = if length == LONG {
            let digits = self.text.get(start..start + LENGTH_DIGITS).unwrap_or("");
            (start + LENGTH_DIGITS, digits.parse().unwrap_or(0))
        } else {
            (start, length as usize)
        };
        self.text.get(start..start + length).unwrap_or("")
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_come_back_as_stored_and_a_repeat_of_the_last_is_not_stored_again() {
        let mut arena = TextArena::default();
        let values = ["anon-1", "", "ñandú@example.mx", "msg-1", "msg-1", "anon-1"];
        let texts: Vec<Text> = values.iter().map(|v| arena.push(v)).collect();
        for (value, text) in values.iter().zip(&texts) {
            assert_eq!(arena.get(*text), *value);
        }
        assert_eq!(texts[3], texts[4]);
        assert_eq!(arena.text.len(), "anon-1ñandú@example.mxmsg-1anon-1".len());
    }

    #[test]
    fn a_string_longer_than_the_length_field_keeps_its_length_beside_it() {
        let mut arena = TextArena::default();
        let long = "x".repeat(LONG as usize + 3);
        let before = arena.push("before");
        let text = arena.push(&long);
        let after = arena.push("after");
        assert_eq!(arena.get(text).len(), long.len());
        assert_eq!(arena.get(text), long);
        assert_eq!(arena.get(before), "before");
        assert_eq!(arena.get(after), "after");
    }
}
