//! The answer to a query naming a column no table it reads has. DataFusion's own message puts
//! its most useful parts (the columns there are; that names are case sensitive) on lines after
//! the first, which error answers leave out, and its advice on case names a setting queries
//! here cannot change.

use datafusion::common::Column;

use super::near_name::nearest_name;

/// At most this many column names are listed; a join of wide tables has many more.
const MOST_LISTED: usize = 60;

/// "no column `nope` here; …": the nearest name when one is near, double quotes when the name
/// differs only in case (unquoted names are read in lower case), and the columns there are.
pub(crate) fn message(field: &Column, valid: &[Column]) -> String {
    // Qualified only where the query reads several tables.
    let several = valid
        .iter()
        .any(|c| c.relation != valid.first().and_then(|f| f.relation.clone()));
    let shown = |c: &Column| {
        if several {
            c.flat_name()
        } else {
            c.name().to_string()
        }
    };
    let mut message = format!(
        "no column `{}` in the tables the query reads",
        field.flat_name()
    );
    let same_but_case = valid
        .iter()
        .find(|c| c.name() != field.name() && c.name().eq_ignore_ascii_case(field.name()));
    if let Some(same_but_case) = same_but_case {
        message.push_str(&format!(
            "; names are read in lower case unless quoted: write \"{}\" in double quotes",
            same_but_case.name()
        ));
    } else if let Some(near) = nearest(field, valid) {
        message.push_str(&format!("; did you mean `{}`?", shown(near)));
    }
    if !valid.is_empty() {
        let names: Vec<String> = valid.iter().take(MOST_LISTED).map(shown).collect();
        let more = valid.len().saturating_sub(MOST_LISTED);
        message.push_str(&format!(" (its columns: {}", names.join(", ")));
        if more > 0 {
            message.push_str(&format!(" and {more} more"));
        }
        message.push_str("; docs/tables.md describes them)");
    }
    message
}

/// The valid column nearest to `field` (see [`nearest_name`]).
fn nearest<'a>(field: &Column, valid: &'a [Column]) -> Option<&'a Column> {
    let name = nearest_name(field.name(), valid.iter().map(Column::name))?;
    valid.iter().find(|column| column.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(names: &[&str]) -> Vec<Column> {
        names
            .iter()
            .map(|name| Column::new(Some("events"), *name))
            .collect()
    }

    #[test]
    fn a_misspelt_name_is_offered_the_nearest_and_every_name_there_is() {
        let valid = events(&["message_id", "type", "event", "user_id"]);
        assert_eq!(
            message(&Column::new_unqualified("evnt"), &valid),
            "no column `evnt` in the tables the query reads; did you mean `event`? (its columns: \
             message_id, type, event, user_id; docs/tables.md describes them)"
        );
        // Two letters swapped are one slip.
        assert!(message(&Column::new_unqualified("tpye"), &valid).contains("did you mean `type`?"));
        // Nothing near: no guess, only the list (`type` is two letters from `nope`).
        assert!(!message(&Column::new_unqualified("nope"), &valid).contains("did you mean"));
        assert_eq!(
            message(&Column::new_unqualified("revenue_total"), &valid),
            "no column `revenue_total` in the tables the query reads (its columns: message_id, \
             type, event, user_id; docs/tables.md describes them)"
        );
    }

    #[test]
    fn a_name_written_in_capitals_is_told_to_quote_it() {
        let valid = events(&["userId", "event"]);
        let said = message(&Column::new_unqualified("userid"), &valid);
        assert!(said.contains("write \"userId\" in double quotes"), "{said}");
    }

    #[test]
    fn the_columns_of_several_tables_are_named_with_their_table_and_cut_short() {
        let mut valid = events(&["event"]);
        valid.push(Column::new(Some("p"), "profile_id"));
        let said = message(&Column::new(Some("e"), "x"), &valid);
        assert!(
            said.contains("(its columns: events.event, p.profile_id;"),
            "{said}"
        );
        let wide: Vec<Column> = (0..70)
            .map(|i| Column::new_unqualified(format!("c{i}")))
            .collect();
        let said = message(&Column::new_unqualified("zzzzzzzz"), &wide);
        assert!(said.contains(", c59 and 10 more;"), "{said}");
    }
}
