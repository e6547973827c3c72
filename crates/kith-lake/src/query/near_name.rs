//! The name nearest to one that matched none, for "did you mean" in messages: a column a query
//! misspelt, an event an analysis names that no event has.

use datafusion::common::utils::datafusion_strsim::levenshtein;

/// The candidate nearest to `wanted`, ignoring case, if one needs at most a third of its letters
/// changed (DataFusion allows half, which offers `type` for `nope`); two neighbours swapped count
/// as one change. The first of equally near candidates wins.
pub fn nearest_name<'a>(
    wanted: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let wanted = wanted.to_lowercase();
    candidates
        .into_iter()
        .map(|candidate| {
            let name = candidate.to_lowercase();
            let longer = name.chars().count().max(wanted.chars().count());
            let distance = if one_swap_apart(&wanted, &name) {
                1
            } else {
                levenshtein(&wanted, &name)
            };
            (distance, longer, candidate)
        })
        .filter(|(distance, longer, _)| *longer > 0 && distance * 3 <= *longer)
        .min_by_key(|(distance, _, _)| *distance)
        .map(|(_, _, candidate)| candidate)
}

/// Whether `b` is `a` with two neighbouring letters swapped (`tpye`, `type`).
fn one_swap_apart(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len() != b.len() {
        return false;
    }
    let differ: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    matches!(differ[..], [i, j] if j == i + 1 && a[i] == b[j] && a[j] == b[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slip_finds_its_name_and_a_stranger_finds_none() {
        let names = ["Product Viewed", "Order Completed", "Product Added"];
        assert_eq!(nearest_name("Product Viewd", names), Some("Product Viewed"));
        assert_eq!(
            nearest_name("order completed", names),
            Some("Order Completed")
        );
        assert_eq!(nearest_name("Prodcut Added", names), Some("Product Added"));
        assert_eq!(nearest_name("Signed Up", names), None);
        assert_eq!(nearest_name("", names), None);
        assert_eq!(nearest_name("x", Vec::<&str>::new()), None);
    }
}
