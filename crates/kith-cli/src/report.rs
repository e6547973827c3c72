//! How the binary words an error it stops on.
//!
//! The libraries' errors often name their cause in their own message ("cannot read FILE: No such
//! file or directory") and also expose it as their `source()`, so that the HTTP API's one-line
//! messages are complete. Printing the whole chain, as `{:#}` does, then says the cause twice.
//! This prints each link of the chain once: a cause already in the message is left out.

/// The error and its causes, outermost first, each said once, joined with `: `.
pub fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for link in err.chain() {
        // A message may quote stored data (a value that failed a cast, a table name), which
        // anyone with a write key chose: its control characters are shown, not acted on.
        let said = link
            .to_string()
            .lines()
            .map(kith_lake::output::escape_controls)
            .collect::<Vec<_>>()
            .join("\n");
        if said.is_empty() || text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot use the data directory {path}: {source}")]
    struct NamesItsCause {
        path: String,
        #[source]
        source: std::io::Error,
    }

    fn not_found() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")
    }

    #[test]
    fn a_cause_the_message_already_names_is_said_once() {
        let err = anyhow::Error::new(NamesItsCause {
            path: "/srv/kith".into(),
            source: not_found(),
        });
        assert_eq!(format!("{err:#}").matches("No such file").count(), 2);
        assert_eq!(
            error_text(&err),
            "cannot use the data directory /srv/kith: No such file or directory"
        );
    }

    #[test]
    fn stored_data_quoted_in_a_message_cannot_drive_the_terminal() {
        let err =
            anyhow::anyhow!("Cannot cast string 'Buy\u{1b}]0;pwned\u{7}\u{1b}[2J' to Int32\nhint");
        assert_eq!(
            error_text(&err),
            "Cannot cast string 'Buy\\u{1b}]0;pwned\\u{7}\\u{1b}[2J' to Int32\nhint"
        );
    }

    #[test]
    fn causes_the_message_does_not_name_are_all_kept_in_order() {
        let err = Err::<(), _>(not_found())
            .context("reading kith.toml")
            .context("cannot start the server")
            .unwrap_err();
        assert_eq!(
            error_text(&err),
            "cannot start the server: reading kith.toml: No such file or directory"
        );
    }

    #[test]
    fn a_context_over_an_error_that_names_its_cause_keeps_both_once() {
        let err = Err::<(), _>(NamesItsCause {
            path: "/srv/kith".into(),
            source: not_found(),
        })
        .context("kith serve")
        .unwrap_err();
        assert_eq!(
            error_text(&err),
            "kith serve: cannot use the data directory /srv/kith: No such file or directory"
        );
    }
}
