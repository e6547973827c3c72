//! How large a query's plan may grow once it is written out in full. A short query can describe
//! a plan that doubles at each step: a CTE that reads the one before it twice (`UNION ALL` of
//! it with itself, two scalar subqueries over it), or a column built from the one before it
//! twice (`struct(s AS a, s AS b)`). The SQL planner shares such repeats, but the optimizer and
//! the physical planner write them out, so twenty short lines become a million plan nodes or
//! struct fields: minutes of planning and gigabytes of memory, outside the time limit (planning
//! cannot be interrupted) and outside the memory pool (plans are not counted in it).
//!
//! Expressions grow the same way as the optimizer rewrites them: `coalesce`, `BETWEEN` and
//! `IN` repeat what they test, and a filter or sort pushed below nested subqueries takes the
//! expressions its columns stand for; and `GROUP BY CUBE` groups every row in 2^n ways.
//!
//! So the parsed SQL (CTE readings, CUBE) and then the plan are measured as written out, right
//! after the SQL is planned and before any of that work, and refused past bounds no query a
//! person writes comes near. The walk stops as soon as a bound is passed, so measuring costs at
//! most the bound, however large the plan.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::expr::{Exists, InSubquery, SetComparison};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Query, Visit, Visitor, visit_relations};

use super::QueryError;

/// The most plan nodes, expression nodes and output columns a plan may hold once every CTE
/// and subquery is written out where it is used. A join of a dozen tables with a few hundred
/// expressions stays below a tenth of it; an `IN` list of the most values the SQL may hold
/// (see `sql_size`) counts one each.
pub(crate) const MAX_PLAN_PARTS: usize = 200_000;

/// The most parts one expression may hold written out (see [`Measure::expression`]): an `IN`
/// list of the most values the SQL may hold is a tenth of it.
pub(crate) const MAX_EXPRESSION_PARTS: usize = 100_000;

/// The most values one column may hold side by side in a row: the leaves of a struct (or of
/// a list's or map's items) written out in full.
pub(crate) const MAX_COLUMN_LEAVES: usize = 10_000;

/// The most times CTEs may be read once each reading is written out: a CTE read twice by one
/// that is itself read twice counts four. The SQL planner already writes out what a `UNION ALL`
/// of a CTE with itself reads, so this is checked on the parsed SQL, before planning. Past a
/// few thousand, planning takes seconds and more for each doubling (12 levels of a CTE read
/// twice by the next, 8,191 readings, took 44 s).
pub(crate) const MAX_CTE_READINGS: u64 = 1_000;

/// Refuses `statement` when a `CUBE` in it names more than [`MAX_CUBE_COLUMNS`] columns, or
/// when its CTEs, each reading written out, are read more than [`MAX_CTE_READINGS`] times.
pub(crate) fn check_statement(statement: &DFStatement) -> Result<(), QueryError> {
    let statement = match statement {
        DFStatement::Statement(statement) => statement,
        DFStatement::Explain(explain) => return check_statement(&explain.statement),
        // Refused later as writes, with their own message.
        _ => return Ok(()),
    };
    let mut cubes = LargestCube::default();
    let _ = statement.visit(&mut cubes);
    if cubes.columns > MAX_CUBE_COLUMNS {
        return Err(QueryError::Invalid(format!(
            "GROUP BY CUBE of {} columns groups every row in each of their {} combinations; at \
             most {MAX_CUBE_COLUMNS} columns ({} combinations) are taken. Name the combinations \
             you need with GROUPING SETS ((a, b), (a), ()), or use ROLLUP",
            cubes.columns,
            1u128
                .checked_shl(cubes.columns as u32)
                .map_or("countless".to_string(), |n| n.to_string()),
            1u32 << MAX_CUBE_COLUMNS
        )));
    }
    let mut definitions = CteDefinitions::default();
    let _ = statement.visit(&mut definitions);
    let mut readings = CteReadings {
        definitions: &definitions.reads,
        known: HashMap::new(),
    };
    for name in &definitions.in_order {
        let count = readings.of(name);
        if count > MAX_CTE_READINGS {
            return Err(QueryError::Invalid(format!(
                "the CTE `{name}`, with each CTE it reads written out where it is read, reads \
                 CTEs more than {MAX_CTE_READINGS} times, which takes too long to plan. This \
                 happens when a CTE reads the one before it more than once (`UNION ALL` of it \
                 with itself, or two subqueries over it, or a join of it with itself), doubling \
                 at each level: compute what the next level needs from one reading of the one \
                 before (a window function such as lag(), or GROUP BY)"
            )));
        }
    }
    Ok(())
}

/// The most columns a `GROUP BY CUBE (…)` may name: each row is grouped in every combination
/// of them, 2^n, outside the memory limit (twelve columns took 5 GB over 35,000 events, and
/// planning twenty took more than 6 GB).
pub(crate) const MAX_CUBE_COLUMNS: usize = 8;

/// The most columns any `CUBE (…)` in a statement names.
#[derive(Default)]
struct LargestCube {
    columns: usize,
}

impl Visitor for LargestCube {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &SqlExpr) -> ControlFlow<()> {
        if let SqlExpr::Cube(sets) = expr {
            self.columns = self.columns.max(sets.len());
        }
        ControlFlow::Continue(())
    }
}

/// Each CTE defined anywhere in a statement, by name, with the names of the tables and CTEs
/// its query reads (once for each time it reads them). Names are compared without case, as
/// the planner does for names not in quotes; a name defined twice (in different scopes) keeps
/// the reads of both, which can only make the count larger.
#[derive(Default)]
struct CteDefinitions {
    reads: HashMap<String, Vec<String>>,
    /// The names in the order they are defined, so the first one past the bound is named.
    in_order: Vec<String>,
}

impl Visitor for CteDefinitions {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        for cte in query.with.iter().flat_map(|with| &with.cte_tables) {
            let mut reads = Vec::new();
            let _ = visit_relations(&cte.query, |relation| {
                if let Some(last) = relation.0.last() {
                    reads.push(last.to_string().to_lowercase());
                }
                ControlFlow::<()>::Continue(())
            });
            let name = cte.alias.name.value.to_lowercase();
            if !self.reads.contains_key(&name) {
                self.in_order.push(name.clone());
            }
            self.reads.entry(name).or_default().extend(reads);
        }
        ControlFlow::Continue(())
    }
}

/// Counts, for a CTE, the CTE readings below it written out, remembering each CTE's count.
struct CteReadings<'a> {
    definitions: &'a HashMap<String, Vec<String>>,
    /// Counted CTEs; `None` while a CTE is being counted, so a recursive CTE's reading of
    /// itself counts once instead of without end.
    known: HashMap<&'a str, Option<u64>>,
}

impl<'a> CteReadings<'a> {
    fn of(&mut self, name: &'a str) -> u64 {
        match self.known.get(name) {
            Some(Some(count)) => return *count,
            Some(None) => return 0,
            None => {}
        }
        let Some(reads) = self.definitions.get(name) else {
            return 0;
        };
        self.known.insert(name, None);
        let mut count = 0u64;
        for read in reads {
            if self.definitions.contains_key(read.as_str()) {
                count = count
                    .saturating_add(1)
                    .saturating_add(self.of(read.as_str()));
            }
        }
        self.known.insert(name, Some(count));
        count
    }
}

/// Refuses `plan` when, written out in full, it holds more than [`MAX_PLAN_PARTS`] parts, an
/// expression of more than [`MAX_EXPRESSION_PARTS`], or a column with more than
/// [`MAX_COLUMN_LEAVES`] values side by side.
pub(crate) fn check(plan: &LogicalPlan) -> Result<(), QueryError> {
    let mut measure = Measure {
        parts_left: MAX_PLAN_PARTS,
    };
    match measure.plan(plan) {
        Ok(_) => Ok(()),
        Err(Exceeded::Parts) => Err(QueryError::Invalid(format!(
            "the query's plan, with each CTE and subquery written out where it is used, holds \
             more than {MAX_PLAN_PARTS} steps, expressions and columns, which takes too long to \
             plan. This happens when a CTE reads the one before it more than once (`UNION ALL` \
             of it with itself, or two subqueries over it), doubling the plan at each level: \
             compute what the next level needs from one reading of the one before (a window \
             function such as lag(), or GROUP BY)"
        ))),
        Err(Exceeded::Leaves(column)) => Err(QueryError::Invalid(format!(
            "the column `{column}` holds more than {MAX_COLUMN_LEAVES} values side by side once \
             its structs, lists and maps are written out; a struct built from another twice \
             (`struct(s AS a, s AS b)`) doubles at each level. Build it from fewer parts"
        ))),
        Err(Exceeded::Expression(expression)) => {
            let expression: String = expression.chars().take(200).collect();
            Err(QueryError::Invalid(format!(
                "an expression of the query, with the columns in it written out as the \
                 expressions they stand for, holds more than {MAX_EXPRESSION_PARTS} parts, which \
                 takes too long to plan: {expression}… The optimizer repeats the argument of \
                 `coalesce`, `nvl` and `ifnull`, the value tested by `BETWEEN` and `IN`, and a \
                 column each time the expression it stands for is used, so nesting them, or \
                 using a column twice at each level of nested subqueries, doubles the \
                 expression at each level. Compute such a value once and nest less"
            )))
        }
        Err(Exceeded::Column(column)) => Err(QueryError::Invalid(format!(
            "the column `{column}` stands for an expression of more than \
             {MAX_EXPRESSION_PARTS} parts once the expressions it is made from, level by level, \
             are written out in its place, which the optimizer does to filter or sort by it \
             (WHERE, HAVING, JOIN ON, ORDER BY), and which takes too long to plan: each level of \
             CASE, coalesce, BETWEEN or IN that reads the level before it several times \
             multiplies it. Map values with a join to a table of them instead of nested CASE \
             (`JOIN (VALUES ('ads', 'paid'), …) AS m(channel, channel_group) USING (channel)`), \
             or filter and sort on the columns it is made from"
        ))),
        Err(Exceeded::Engine(e)) => Err(QueryError::Internal(e.to_string())),
    }
}

enum Exceeded {
    Parts,
    /// Names a column that stands for an expression too large to filter or sort by.
    Column(String),
    /// Names the expression.
    Expression(String),
    /// Names the column.
    Leaves(String),
    /// The walk itself failed (it cannot, as the visitor never fails, but the API says it may).
    Engine(DataFusionError),
}

impl From<DataFusionError> for Exceeded {
    fn from(e: DataFusionError) -> Self {
        Exceeded::Engine(e)
    }
}

struct Measure {
    parts_left: usize,
}

impl Measure {
    fn spend(&mut self, parts: usize) -> Result<(), Exceeded> {
        self.parts_left = self.parts_left.checked_sub(parts).ok_or(Exceeded::Parts)?;
        Ok(())
    }

    /// Walks `plan` as written out: an input or subquery shared by several nodes is walked
    /// once for each, as the optimizer will copy it. Gives the written-out size of each column
    /// `plan` makes (see [`Measure::expression`]), by name, where the optimizer may put a
    /// column's expression in place of the column (through projections, filters, sorts).
    fn plan(&mut self, plan: &LogicalPlan) -> Result<ColumnSizes, Exceeded> {
        self.spend(1)?;
        for field in plan.schema().fields() {
            let leaves = leaves(field.data_type(), MAX_COLUMN_LEAVES)
                .ok_or_else(|| Exceeded::Leaves(field.name().clone()))?;
            self.spend(leaves)?;
        }
        let mut visible = ColumnSizes::new();
        for input in plan.inputs() {
            for (name, size) in self.plan(input)? {
                let known = visible.entry(name).or_insert(size);
                *known = (*known).max(size);
            }
        }
        let mut sizes = Vec::new();
        let mut subqueries = Vec::new();
        // A filter (WHERE, HAVING on grouping columns, JOIN ON) is pushed below the projections
        // that made its columns, and so is what a sort compares (as the filter a top-k keeps).
        let pushed_down = matches!(
            plan,
            LogicalPlan::Filter(_) | LogicalPlan::Join(_) | LogicalPlan::Sort(_)
        );
        until_exceeded(
            |visit| plan.apply_expressions(visit),
            |expr| {
                let size = self.expression(expr, &visible, &mut subqueries)?;
                if pushed_down && size.inlined > MAX_EXPRESSION_PARTS {
                    return Err(largest_column(expr, &visible));
                }
                self.spend(size.own)?;
                sizes.push(size.inlined);
                Ok(())
            },
        )?;
        for subquery in subqueries {
            self.plan(&subquery)?;
        }
        let named = |sizes: Vec<usize>| -> ColumnSizes {
            plan.schema()
                .fields()
                .iter()
                .zip(sizes)
                .map(|(field, size)| (field.name().clone(), size))
                .collect()
        };
        Ok(match plan {
            LogicalPlan::Projection(_) => named(sizes),
            // Grouping columns come first, as their expressions do; a filter on them is pushed
            // below the aggregate with their expressions in their place (not below grouping
            // sets: see `global_aggregates`).
            LogicalPlan::Aggregate(aggregate)
                if !aggregate
                    .group_expr
                    .iter()
                    .any(|expr| matches!(expr, Expr::GroupingSet(_))) =>
            {
                named(sizes.into_iter().take(aggregate.group_expr.len()).collect())
            }
            LogicalPlan::Filter(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Repartition(_) => visible,
            _ => ColumnSizes::new(),
        })
    }

    /// The size of `expr` written out (see [`Size`]). Each argument the optimizer repeats counts
    /// as often as it is repeated: `coalesce(a, b)` becomes `CASE WHEN a IS NOT NULL THEN a ELSE
    /// b END`, `x BETWEEN a AND b` becomes `x >= a AND x <= b`, a short `x IN (a, b)` becomes
    /// `x = a OR x = b`. Nested, each doubles the expression; twenty short levels made a million
    /// nodes. Subqueries found in it are added to `subqueries`.
    fn expression(
        &mut self,
        expr: &Expr,
        sizes: &ColumnSizes,
        subqueries: &mut Vec<Arc<LogicalPlan>>,
    ) -> Result<Size, Exceeded> {
        let size = match expr {
            Expr::Column(column) => Size {
                own: 1,
                inlined: sizes.get(&column.name).copied().unwrap_or(1),
            },
            Expr::Between(between) => {
                let tested = self.expression(&between.expr, sizes, subqueries)?;
                let low = self.expression(&between.low, sizes, subqueries)?;
                let high = self.expression(&between.high, sizes, subqueries)?;
                Size::ONE.plus(tested.times(2)).plus(low).plus(high)
            }
            Expr::InList(in_list) => {
                let tested = self.expression(&in_list.expr, sizes, subqueries)?;
                let mut size = Size::ONE.plus(tested.times(in_list.list.len().min(3)));
                for item in &in_list.list {
                    size = size.plus(self.expression(item, sizes, subqueries)?);
                }
                size
            }
            Expr::ScalarFunction(call) if REPEATING_FUNCTIONS.contains(&call.name()) => {
                let mut size = Size::ONE;
                for arg in &call.args {
                    size = size.plus(self.expression(arg, sizes, subqueries)?.times(2));
                }
                size
            }
            other => {
                if let Some(subquery) = subquery_of(other) {
                    subqueries.push(Arc::clone(subquery));
                }
                let mut size = Size::ONE;
                until_exceeded(
                    |visit| other.apply_children(visit),
                    |child| {
                        size = size.plus(self.expression(child, sizes, subqueries)?);
                        Ok(())
                    },
                )?;
                // `CASE x WHEN a … WHEN b …` compares `x` with each value.
                if let Expr::Case(case) = other
                    && let Some(operand) = &case.expr
                {
                    let repeats = case.when_then_expr.len().saturating_sub(1);
                    let operand = self.expression(operand, sizes, subqueries)?;
                    size = size.plus(operand.times(repeats));
                }
                size
            }
        };
        if size.own > MAX_EXPRESSION_PARTS {
            return Err(Exceeded::Expression(expr.schema_name().to_string()));
        }
        Ok(size)
    }
}

/// The size of an expression written out: `own` counts its columns as one each; `inlined`
/// counts each column as the expression it stands for in the input, which is what the
/// optimizer makes of a filter when it pushes it below the projections that made its columns.
/// (A projection over a projection is merged only where that repeats no expression, so
/// `inlined` matters for filters and join conditions, not for what a query selects.)
#[derive(Debug, Clone, Copy)]
struct Size {
    own: usize,
    inlined: usize,
}

impl Size {
    const ONE: Size = Size { own: 1, inlined: 1 };

    fn plus(self, other: Size) -> Size {
        Size {
            own: self.own.saturating_add(other.own),
            inlined: self.inlined.saturating_add(other.inlined),
        }
    }

    fn times(self, repeats: usize) -> Size {
        Size {
            own: self.own.saturating_mul(repeats),
            inlined: self.inlined.saturating_mul(repeats),
        }
    }
}

/// Runs `each` on every expression `walk` visits, and stops the walk at the first that passes
/// a bound, handing that on.
fn until_exceeded(
    walk: impl FnOnce(
        &mut dyn FnMut(&Expr) -> datafusion::common::Result<TreeNodeRecursion>,
    ) -> datafusion::common::Result<TreeNodeRecursion>,
    mut each: impl FnMut(&Expr) -> Result<(), Exceeded>,
) -> Result<(), Exceeded> {
    let mut outcome = Ok(());
    walk(&mut |expr| match each(expr) {
        Ok(()) => Ok(TreeNodeRecursion::Continue),
        Err(exceeded) => {
            outcome = Err(exceeded);
            Ok(TreeNodeRecursion::Stop)
        }
    })?;
    outcome
}

/// The refusal of `expr`, too large written out: it names the column in it that stands for the
/// largest expression, which is what to change.
fn largest_column(expr: &Expr, sizes: &ColumnSizes) -> Exceeded {
    let largest = expr
        .column_refs()
        .into_iter()
        .filter_map(|column| {
            sizes
                .get(&column.name)
                .map(|size| (column.name.clone(), *size))
        })
        .max_by_key(|(_, size)| *size);
    match largest {
        Some((column, _)) if !column.is_empty() => Exceeded::Column(column),
        _ => Exceeded::Expression(expr.schema_name().to_string()),
    }
}

/// Written-out sizes of a plan's columns, by name.
type ColumnSizes = HashMap<String, usize>;

/// Functions the optimizer rewrites into expressions that repeat their arguments.
const REPEATING_FUNCTIONS: [&str; 4] = ["coalesce", "nvl", "ifnull", "nvl2"];

/// The plan of a subquery within an expression.
fn subquery_of(expr: &Expr) -> Option<&Arc<LogicalPlan>> {
    match expr {
        Expr::Exists(Exists { subquery, .. })
        | Expr::InSubquery(InSubquery { subquery, .. })
        | Expr::SetComparison(SetComparison { subquery, .. })
        | Expr::ScalarSubquery(subquery) => Some(&subquery.subquery),
        _ => None,
    }
}

/// The values `data_type` holds side by side (1 for a scalar type, the sum of its fields' for
/// a struct), or `None` past `at_most`: the count stops there, so a type that doubles twenty
/// times is not walked a million times over.
fn leaves(data_type: &DataType, at_most: usize) -> Option<usize> {
    let children: Vec<&DataType> = match data_type {
        DataType::Struct(fields) => fields.iter().map(|f| f.data_type()).collect(),
        DataType::Union(fields, _) => fields.iter().map(|(_, f)| f.data_type()).collect(),
        DataType::List(item)
        | DataType::ListView(item)
        | DataType::LargeList(item)
        | DataType::LargeListView(item)
        | DataType::FixedSizeList(item, _)
        | DataType::Map(item, _) => vec![item.data_type()],
        DataType::Dictionary(_, value) => vec![value.as_ref()],
        DataType::RunEndEncoded(_, values) => vec![values.data_type()],
        _ => return (at_most >= 1).then_some(1),
    };
    let mut total = 0usize;
    for child in children {
        total += leaves(child, at_most - total)?;
    }
    (total.max(1) <= at_most).then_some(total.max(1))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Fields};
    use datafusion::sql::parser::DFParser;

    use super::{MAX_COLUMN_LEAVES, check_statement, leaves};
    use crate::query::QueryError;

    /// `levels` CTEs, each a `UNION ALL` of the one before it with itself.
    fn doubling_ctes(levels: usize) -> String {
        let mut sql = "WITH t0 AS (SELECT 1 AS x)".to_string();
        for level in 1..=levels {
            let before = level - 1;
            sql += &format!(
                ", T{level} AS (SELECT x FROM t{before} UNION ALL SELECT x FROM t{before})"
            );
        }
        sql + &format!(" SELECT count(*) FROM t{levels}")
    }

    fn cte_readings(sql: &str) -> Result<(), QueryError> {
        let mut statements = DFParser::parse_sql(sql).unwrap();
        check_statement(&statements.pop_front().unwrap())
    }

    #[test]
    fn ctes_read_past_the_bound_once_written_out_are_refused() {
        // Eight levels read CTEs 510 times; nine, 1,022.
        cte_readings(&doubling_ctes(8)).unwrap();
        let Err(QueryError::Invalid(message)) = cte_readings(&doubling_ctes(9)) else {
            panic!("nine doublings are taken");
        };
        assert!(
            message.starts_with("the CTE `t9`, with each CTE it reads written out"),
            "{message}"
        );
        assert!(message.contains("more than 1000 times"), "{message}");
        // Through EXPLAIN, and at any depth, in no time.
        let explained = format!("EXPLAIN {}", doubling_ctes(200));
        assert!(cte_readings(&explained).is_err());
        // Two subqueries over the one before double as well.
        let mut sql = "WITH t0 AS (SELECT 1 AS x)".to_string();
        for level in 1..=12 {
            let before = level - 1;
            sql += &format!(
                ", t{level} AS (SELECT (SELECT max(x) FROM t{before}) + \
                 (SELECT min(x) FROM t{before}) AS x)"
            );
        }
        assert!(cte_readings(&(sql + " SELECT x FROM t12")).is_err());
    }

    #[test]
    fn ordinary_ctes_recursive_ones_and_tables_named_like_ctes_are_taken() {
        // A diamond: each CTE read once or twice, a handful of readings.
        cte_readings(
            "WITH a AS (SELECT user_id FROM events), b AS (SELECT * FROM a), \
             c AS (SELECT * FROM a JOIN b USING (user_id)) SELECT * FROM c JOIN b USING (user_id)",
        )
        .unwrap();
        // A recursive CTE reads itself: counted once, not without end.
        cte_readings(
            "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 5) \
             SELECT sum(n) FROM t",
        )
        .unwrap();
        // Tables are not CTEs, however often they are read.
        let reads = vec!["SELECT 1 FROM events"; 2_000].join(" UNION ALL ");
        cte_readings(&format!("WITH t AS ({reads}) SELECT * FROM t")).unwrap();
    }

    fn doubled(levels: usize) -> DataType {
        let mut data_type = DataType::Int64;
        for _ in 0..levels {
            let field = Arc::new(Field::new("x", data_type, true));
            data_type = DataType::Struct(Fields::from(vec![field.clone(), field]));
        }
        data_type
    }

    #[test]
    fn leaves_count_a_structs_fields_written_out() {
        assert_eq!(leaves(&DataType::Utf8, 10), Some(1));
        assert_eq!(leaves(&doubled(3), 10), Some(8));
        let list = DataType::new_list(doubled(2), true);
        assert_eq!(leaves(&list, 10), Some(4));
        assert_eq!(leaves(&doubled(4), 10), None);
    }

    /// A type that doubles sixty times is refused after counting to the bound, not 2^60.
    #[test]
    fn counting_stops_at_the_bound() {
        assert_eq!(leaves(&doubled(60), MAX_COLUMN_LEAVES), None);
    }
}
