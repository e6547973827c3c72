//! Strings numbered as first seen, so rows gathered by the million carry a `u32` instead of a
//! copy of their breakdown value or label.

use hashbrown::HashMap;

#[derive(Debug, Default)]
pub(crate) struct Interner {
    numbers: HashMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    /// The number of `value`, given it if new.
    pub(crate) fn number(&mut self, value: &str) -> u32 {
        if let Some(&number) = self.numbers.get(value) {
            return number;
        }
        let number = self.names.len() as u32;
        self.names.push(value.to_string());
        self.numbers.insert(value.to_string(), number);
        number
    }

    /// The strings by number.
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    pub(crate) fn into_names(self) -> Vec<String> {
        self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_keep_the_number_they_were_first_given() {
        let mut interner = Interner::default();
        assert_eq!(interner.number("web"), 0);
        assert_eq!(interner.number("ios"), 1);
        assert_eq!(interner.number("web"), 0);
        assert_eq!(interner.names(), ["web", "ios"]);
    }
}
