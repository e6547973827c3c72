//! Fixture readers shared by the integration tests. All fixtures live in `tests/fixtures/`.
#![allow(dead_code)]

use std::path::PathBuf;

/// Path of a fixture file.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// A CSV file with a header, as (header, rows of raw fields). The fixtures have no quoting.
pub fn read_csv(name: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(fixture(name)).expect("fixture readable");
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .expect("header")
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let rows = lines
        .map(|l| l.split(',').map(|s| s.trim().to_string()).collect())
        .collect();
    (header, rows)
}

/// Index of a column by name.
pub fn col(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("column {name} missing"))
}

/// A flat two-level JSON object of numbers (`{"model": {"param": 1.0}}`) as
/// (model, param, value) triples. The reference params file has exactly this shape, so a tiny
/// scanner keeps serde_json out of the dependency tree.
pub fn read_nested_numbers(name: &str) -> Vec<(String, String, f64)> {
    let text = std::fs::read_to_string(fixture(name)).expect("fixture readable");
    let mut out = Vec::new();
    let mut depth = 0;
    let mut outer = String::new();
    let mut chars = text.chars().peekable();
    let mut pending_key: Option<String> = None;
    while let Some(ch) = chars.next() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            '"' => {
                let mut s = String::new();
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    s.push(c);
                }
                pending_key = Some(s);
            }
            ':' => {
                // Skip whitespace and read a number if one follows.
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                let key = pending_key.take().expect("key before colon");
                if chars.peek() == Some(&'{') {
                    outer = key;
                } else {
                    let mut num = String::new();
                    while let Some(&c) = chars.peek() {
                        if c.is_ascii_digit() || "+-.eE".contains(c) {
                            num.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    assert_eq!(depth, 2, "expected a two-level object");
                    out.push((outer.clone(), key, num.parse().expect("number")));
                }
            }
            _ => {}
        }
    }
    out
}

/// Relative difference |a − b| / |b|.
pub fn rel_err(a: f64, b: f64) -> f64 {
    ((a - b) / b).abs()
}
