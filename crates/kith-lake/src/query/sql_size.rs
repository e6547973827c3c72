//! How large a query may be written. The engine walks a query's expressions recursively while
//! planning, optimizing, naming its columns and handing filters to the Delta scan, so a long
//! flat chain (`a + b + c …`, `x <> 1 AND x <> 2 …`, an `IN` list the scan turns into ORs) is as
//! deep as it is long. Deep enough, it overflows the thread's stack, which no Rust code can
//! catch: the process aborts. So query threads get a large stack, and a query is refused when it
//! holds more terms than that stack is known to bear, with a message that says so.
//!
//! Planning a long chain also takes time that grows faster than the chain (a thousand `AND`s
//! take seconds, and planning cannot be interrupted by the time limit), so operators, the
//! links of such chains, are bounded far below the terms.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use super::QueryError;

/// The stack of every thread that plans or runs queries (virtual memory: only what a query
/// reaches is ever touched). With it, [`MAX_TERMS`] terms in one chain plan and run even in
/// a debug build, whose frames are several times larger than a release build's.
pub const QUERY_THREAD_STACK_BYTES: usize = 256 << 20;

/// The most terms (names, values, operators, commas) one query may hold.
pub(crate) const MAX_TERMS: usize = 20_000;

/// The most operators (`+`, `||`, `=`, `AND`, `OR`, `UNION` …) one query may hold.
pub(crate) const MAX_OPERATORS: usize = 1_000;

/// The most `||` one query may hold: each is planned as a call whose name spells out its
/// arguments' names, so a chain costs about the cube of its length (1,000 took minutes);
/// `concat(a, b, c, …)` joins any number at the cost of one.
pub(crate) const MAX_CONCATENATIONS: usize = 100;

/// Refuses `sql` when it holds more than [`MAX_TERMS`] terms or [`MAX_OPERATORS`] operators.
/// Text the tokenizer cannot read is left to the parser, whose message names the place.
pub(crate) fn check(sql: &str) -> Result<(), QueryError> {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return Ok(());
    };
    let (mut terms, mut operators, mut concatenations) = (0, 0, 0);
    for token in &tokens {
        if matches!(token, Token::Whitespace(_) | Token::EOF) {
            continue;
        }
        terms += 1;
        if is_operator(token) {
            operators += 1;
        }
        if *token == Token::StringConcat {
            concatenations += 1;
        }
    }
    if concatenations > MAX_CONCATENATIONS {
        return Err(QueryError::TooLarge(format!(
            "the SQL holds {concatenations} `||`; at most {MAX_CONCATENATIONS} are taken, as \
             planning a chain of them takes time that grows with the cube of its length. Join \
             many values with `concat(a, b, c, …)` instead"
        )));
    }
    if terms > MAX_TERMS {
        return Err(QueryError::TooLarge(format!(
            "the SQL holds {terms} terms (names, values, operators and commas); at most \
             {MAX_TERMS} are taken, as the engine plans an expression as deep as it is long. \
             Split the query, or shorten a long list of values"
        )));
    }
    if operators > MAX_OPERATORS {
        return Err(QueryError::TooLarge(format!(
            "the SQL holds {operators} operators (such as +, ||, =, AND, OR, UNION); at most \
             {MAX_OPERATORS} are taken, as planning a chain of them takes time that grows faster \
             than the chain. A long `x = 1 OR x = 2 …` is `x IN (1, 2, …)`, which costs far less"
        )));
    }
    Ok(())
}

/// Whether `token` links two expressions (or two queries) into one.
fn is_operator(token: &Token) -> bool {
    match token {
        Token::Word(word) => matches!(
            word.keyword,
            Keyword::AND | Keyword::OR | Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT
        ),
        Token::DoubleEq
        | Token::Eq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::Spaceship
        | Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::DuckIntDiv
        | Token::Mod
        | Token::StringConcat
        | Token::Ampersand
        | Token::Pipe
        | Token::Caret
        | Token::ShiftLeft
        | Token::ShiftRight
        | Token::Tilde
        | Token::TildeAsterisk
        | Token::ExclamationMarkTilde
        | Token::ExclamationMarkTildeAsterisk
        | Token::Arrow
        | Token::LongArrow => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> Option<String> {
        check(sql).err().map(|e| e.to_string())
    }

    #[test]
    fn long_chains_are_refused_by_what_they_hold_and_ordinary_queries_pass() {
        let chain = |n: usize, op: &str| {
            format!(
                "SELECT count(*) FROM events WHERE {}",
                (0..n)
                    .map(|i| format!("user_id <> 'u{i}'"))
                    .collect::<Vec<_>>()
                    .join(op)
            )
        };
        // 500 comparisons, 499 ANDs and the `*` of `count(*)`.
        assert_eq!(refused(&chain(500, " AND ")), None);
        let message = refused(&chain(600, " AND ")).unwrap();
        assert!(message.contains("1200 operators"), "{message}");
        let message = refused(&format!("SELECT {}", vec!["1"; 1002].join("+"))).unwrap();
        assert!(message.contains("1001 operators"), "{message}");
        let message = refused(&format!("SELECT 1{}", " OR 1 = 1".repeat(501))).unwrap();
        assert!(message.contains("IN (1, 2"), "{message}");
        // `||` has a bound of its own.
        assert_eq!(
            refused(&format!("SELECT 'a'{}", " || 'a'".repeat(100))),
            None
        );
        let message = refused(&format!("SELECT 'a'{}", " || 'a'".repeat(101))).unwrap();
        assert!(
            message.contains("101 `||`") && message.contains("concat("),
            "{message}"
        );

        // A long IN list is no chain: thousands of values pass, beyond the terms they do not.
        let list = |n: usize| {
            format!(
                "SELECT count(*) FROM events WHERE user_id IN ({})",
                (0..n)
                    .map(|i| format!("'u{i}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        assert_eq!(refused(&list(9_000)), None);
        let message = refused(&list(10_000)).unwrap();
        assert!(message.contains("20011 terms"), "{message}");

        // Whitespace and comments are not terms; text the tokenizer cannot read is left to
        // the parser.
        assert_eq!(
            refused(&format!("SELECT 1 {}", "-- note\n ".repeat(30_000))),
            None
        );
        assert_eq!(refused("SELECT 'unterminated"), None);
    }
}
