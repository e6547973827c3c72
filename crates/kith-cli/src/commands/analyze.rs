//! `kith analyze rfm|cohorts|funnel|paths|preferences|risk|trends`: the analyses of
//! `POST /v1/analytics/*`, asked of the server that holds the data directory when one runs, else
//! run on the directory directly; as a table, CSV or JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use kith_analytics::{Analysis, Data};
use serde_json::{Map, Value, json};

use super::sql::open_consistent;
use super::{DataDirArg, runtime};
use crate::config::FileConfig;

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Args)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    /// rfm, cohorts, funnel, paths, preferences, risk or trends
    analysis: String,
    /// The definition as JSON, as `POST /v1/analytics/ANALYSIS` takes it (see docs/analytics.md)
    #[arg(long, value_name = "JSON")]
    definition: Option<String>,
    /// The definition in a JSON file
    #[arg(long, value_name = "FILE", conflicts_with = "definition")]
    file: Option<PathBuf>,
    /// Funnel steps, in order, comma-separated event names (e.g. "Product Viewed,Order Completed")
    #[arg(long)]
    steps: Option<String>,
    /// Events from this time (RFC 3339 or a date)
    #[arg(long)]
    from: Option<String>,
    /// Events before this time
    #[arg(long)]
    to: Option<String>,
    /// Time zone of days, weeks and months (IANA name)
    #[arg(long)]
    timezone: Option<String>,
    /// Split results by this field: of the event (context.device.type, properties.payment_method)
    /// or of its profile (profile.model_traits.rfm_segment, profile.traits.plan)
    #[arg(long)]
    breakdown: Option<String>,
    /// Only profiles whose field has this value, e.g.
    /// profile.model_traits.rfm_segment=Champions; repeat for more (all must hold). Other
    /// operators go in the definition's `segment` list
    #[arg(long, value_name = "FIELD=VALUE")]
    segment: Vec<String>,
    /// Funnel conversion window, e.g. 7d
    #[arg(long)]
    window: Option<String>,
    /// Trend and cohort interval: hour, day, week or month
    #[arg(long)]
    interval: Option<String>,
    /// Trend: the event counted; paths: the event paths start from
    #[arg(long)]
    event: Option<String>,
    /// Trend: count, unique_profiles, approx_unique_profiles, sum or mean
    #[arg(long)]
    measure: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// rfm, risk, preferences: also write each profile's result onto it as traits
    /// (`rfm_segment`…, `activity_trend` and `risk_signals`, `top_categories`), replacing the
    /// last run's, as the server's scheduled runs do
    #[arg(long)]
    write_traits: bool,
}

impl AnalyzeArgs {
    /// The definition: the JSON given, with the flags' fields on top.
    fn definition(&self) -> anyhow::Result<Value> {
        let text = match (&self.definition, &self.file) {
            (Some(text), _) => text.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
            (None, None) => "{}".to_string(),
        };
        let mut definition: Map<String, Value> = match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => bail!("the definition must be a JSON object"),
            Err(e) => bail!("the definition is not valid JSON: {e}"),
        };
        let mut set = |key: &str, value: &Option<String>| {
            if let Some(value) = value {
                definition.insert(key.into(), Value::String(value.clone()));
            }
        };
        set("from", &self.from);
        set("to", &self.to);
        set("timezone", &self.timezone);
        set("breakdown", &self.breakdown);
        set("window", &self.window);
        set("interval", &self.interval);
        set("event", &self.event);
        set("measure", &self.measure);
        if !self.segment.is_empty() {
            let mut conditions = match definition.remove("segment") {
                None => Vec::new(),
                Some(Value::Array(conditions)) => conditions,
                Some(_) => bail!("the definition's `segment` must be a list of conditions"),
            };
            for condition in &self.segment {
                let Some((field, value)) = condition.split_once('=') else {
                    bail!(
                        "--segment `{condition}` is not FIELD=VALUE (e.g. profile.model_traits.rfm_segment=Champions)"
                    );
                };
                conditions.push(json!({"field": field.trim(), "op": "eq", "value": value.trim()}));
            }
            definition.insert("segment".into(), Value::Array(conditions));
        }
        if let Some(steps) = &self.steps {
            let names: Vec<&str> = steps.split(',').map(str::trim).collect();
            // An empty step is a slip (`A,,B`): dropped, the funnel would silently have a step
            // fewer than the person wrote.
            if let Some(position) = names.iter().position(|name| name.is_empty()) {
                anyhow::bail!(
                    "--steps: step {} is empty; give event names separated by commas, e.g. \
                     \"Product Viewed,Order Completed\"",
                    position + 1
                );
            }
            let steps: Vec<Value> = names
                .into_iter()
                .map(|event| json!({ "event": event }))
                .collect();
            definition.insert("steps".into(), Value::Array(steps));
        }
        Ok(Value::Object(definition))
    }
}

pub fn run(args: AnalyzeArgs, file: FileConfig) -> anyhow::Result<ExitCode> {
    if args.write_traits {
        return write_traits(args, file);
    }
    let analysis =
        Analysis::parse(&args.analysis, &args.definition()?).map_err(|e| anyhow::anyhow!("{e}"))?;
    let data_dir = file.data_dir(args.data_dir.data_dir.clone());
    super::existing_data_dir(
        &data_dir,
        "import data or start `kith serve` first, or pass --data-dir",
    )?;
    // A running server has the tables and profiles open already: ask it.
    let served = match kith_server::local::find(&data_dir) {
        Some(server) => ask_server(&server, &args.analysis, &args.definition()?)?,
        None => None,
    };
    let report = match served {
        Some(report) => report,
        None => analyze_here(&analysis, &data_dir, &file)?,
    };
    print_report(&args, &report)
}

/// The report from the server that holds the data directory; `None` when it does not answer
/// (a server stopped without withdrawing its address), so the caller reads the directory itself.
fn ask_server(
    server: &kith_server::local::LocalServer,
    analysis: &str,
    definition: &Value,
) -> anyhow::Result<Option<Value>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(3600)))
        .build()
        .into();
    let url = format!("{}/v1/analytics/{analysis}", server.url);
    let Ok(mut response) = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {}", server.token))
        .header("Content-Type", "application/json")
        .send(definition.to_string().as_bytes())
    else {
        return Ok(None);
    };
    eprintln!("asked the running server at {}", server.url);
    let status = response.status().as_u16();
    let answer: Value = response
        .body_mut()
        .read_json()
        .with_context(|| format!("the server's answer to {url} is not JSON"))?;
    if status != 200 {
        bail!(
            "{}",
            answer["message"]
                .as_str()
                .unwrap_or("the server refused the analysis")
        );
    }
    Ok(Some(answer))
}

/// `--write-traits`: runs the analysis as a profile model, through the running server's model
/// jobs when there is one (it holds the profiles), else here, and writes its traits.
fn write_traits(args: AnalyzeArgs, file: FileConfig) -> anyhow::Result<ExitCode> {
    if !["rfm", "risk", "preferences"].contains(&args.analysis.as_str()) {
        bail!(
            "--write-traits works for rfm, risk and preferences (CLV: kith models clv fit --write-traits), not {}",
            args.analysis
        );
    }
    let definition = args.definition()?;
    let model = kith_analytics::ProfileModel::parse(&args.analysis, &definition)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let data_dir = file.data_dir(args.data_dir.data_dir.clone());
    super::existing_data_dir(
        &data_dir,
        "import data or start `kith serve` first, or pass --data-dir",
    )?;
    let (report, profiles) = match kith_server::local::find(&data_dir) {
        Some(server) => match run_on_server(&server, &args.analysis, &definition)? {
            Some(done) => done,
            None => run_model_here(&model, &data_dir, &file)?,
        },
        None => run_model_here(&model, &data_dir, &file)?,
    };
    eprintln!(
        "traits written onto {profiles} profiles: {}",
        model.trait_names().join(", ")
    );
    print_report(&args, &report)
}

/// Starts the model on the server, waits for it, returns its report and the profiles it
/// scored; `None` when the server does not answer.
fn run_on_server(
    server: &kith_server::local::LocalServer,
    model: &str,
    definition: &Value,
) -> anyhow::Result<Option<(Value, u64)>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into();
    let bearer = format!("Bearer {}", server.token);
    let call =
        |request: ureq::RequestBuilder<ureq::typestate::WithoutBody>| -> Option<(u16, Value)> {
            let mut response = request.header("Authorization", &bearer).call().ok()?;
            let status = response.status().as_u16();
            Some((
                status,
                response.body_mut().read_json().unwrap_or(Value::Null),
            ))
        };
    let Ok(mut started) = agent
        .post(format!("{}/v1/models/{model}/fit", server.url))
        .header("Authorization", &bearer)
        .header("Content-Type", "application/json")
        .send(definition.to_string().as_bytes())
    else {
        return Ok(None);
    };
    eprintln!("asked the running server at {}", server.url);
    if started.status().as_u16() != 202 {
        let answer: Value = started.body_mut().read_json().unwrap_or(Value::Null);
        bail!(
            "{}",
            answer["message"]
                .as_str()
                .unwrap_or("the server refused the run")
        );
    }
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (_, status) = call(agent.get(format!("{}/v1/models/{model}", server.url)))
            .context("the server stopped answering while the run was going on")?;
        match status["job"]["state"].as_str() {
            Some("running") => continue,
            Some("succeeded") => break,
            _ => bail!(
                "the run failed: {}",
                status["job"]["error"]
                    .as_str()
                    .unwrap_or("see the server log")
            ),
        }
    }
    let (_, results) = call(agent.get(format!("{}/v1/models/{model}/results", server.url)))
        .context("the server stopped answering")?;
    let profiles = results["profiles"].as_u64().unwrap_or(0);
    Ok(Some((results["report"].clone(), profiles)))
}

/// Runs the model in this process and writes its traits into the data directory.
fn run_model_here(
    model: &kith_analytics::ProfileModel,
    data_dir: &std::path::Path,
    file: &FileConfig,
) -> anyhow::Result<(Value, u64)> {
    let settings = file.profile_settings()?;
    runtime()?.block_on(async {
        let (lake, profiles) = open_consistent(data_dir, settings).await?;
        let data = Data::new(
            &lake,
            vec![kith_server::profiles::identity_table(&profiles)],
            file.model_run_limits()?,
        )
        .with_profiles(std::sync::Arc::new(kith_server::profiles::ProfileViews(
            &profiles,
        )));
        let run = model
            .gather(&data)
            .await
            .and_then(|g| g.finish())
            .map_err(|e| anyhow::anyhow!(kith_server::models::explain_run_error(&e)))?;
        let written = profiles
            .model_traits()
            .replace(model.name(), &model.trait_names(), &run.report, run.traits)
            .context("writing the traits failed")?;
        Ok((run.report, written.profiles))
    })
}

/// Runs the analysis in this process, on the data directory read directly.
fn analyze_here(
    analysis: &Analysis,
    data_dir: &std::path::Path,
    file: &FileConfig,
) -> anyhow::Result<Value> {
    let settings = file.profile_settings()?;
    runtime()?.block_on(async {
        let (lake, profiles) = open_consistent(data_dir, settings).await?;
        // `[query]`'s limits, as the server's analyses have, but an hour at least: a command
        // is waited for, not a request that ties up a server thread.
        let mut limits = file.query_limits()?;
        limits.timeout = limits.timeout.max(std::time::Duration::from_secs(3600));
        let data = Data::new(
            &lake,
            vec![kith_server::profiles::identity_table(&profiles)],
            limits,
        )
        .with_profiles(std::sync::Arc::new(kith_server::profiles::ProfileViews(
            &profiles,
        )));
        analysis
            .run(&data)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
}

fn print_report(args: &AnalyzeArgs, report: &Value) -> anyhow::Result<ExitCode> {
    match args.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(report)?)?,
        Format::Table | Format::Csv => {
            let (headers, rows) = tabulate(&args.analysis, report);
            if matches!(args.format, Format::Csv) {
                // Written whole into memory (a report is a table of a few hundred rows at most),
                // then out, so a closed pipe ends the command as it does elsewhere.
                let mut writer = csv::Writer::from_writer(Vec::new());
                writer.write_record(&headers)?;
                for row in &rows {
                    writer.write_record(row)?;
                }
                let text = String::from_utf8(writer.into_inner()?)?;
                out!("{text}")?;
            } else {
                print_table(&headers, &rows)?;
                print_notes(&args.analysis, report)?;
            }
            // Why a table is empty, on stderr so a CSV stays a CSV (JSON has them as `notes`).
            for note in report["notes"].as_array().into_iter().flatten() {
                eprintln!("{}", shown(note));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// [`cell`] as a terminal may show it (see [`table_text`]).
fn shown(value: &Value) -> String {
    kith_lake::output::escape_controls(&cell(value))
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.4}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string(),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// The rows of `items` of each group (`{breakdown, ITEMS: [...]}`), each led by its group's
/// breakdown value, with the cells `keys` name.
fn rows_by_breakdown(groups: &[Value], items: &str, keys: &[&str]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for group in groups {
        for item in group[items].as_array().into_iter().flatten() {
            let mut row = vec![cell(&group["breakdown"])];
            row.extend(keys.iter().map(|k| cell(&item[*k])));
            rows.push(row);
        }
    }
    rows
}

/// The report's main table: RFM segments, the cohort matrix, funnel steps, path links, trend
/// points.
fn tabulate(kind: &str, report: &Value) -> (Vec<String>, Vec<Vec<String>>) {
    let list = |key: &str| report[key].as_array().cloned().unwrap_or_default();
    let pick = |item: &Value, keys: &[&str]| keys.iter().map(|k| cell(&item[*k])).collect();
    let names = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect();
    match kind {
        "rfm" => {
            let keys = [
                "segment",
                "breakdown",
                "profiles",
                "share",
                "value",
                "mean_recency_days",
                "mean_frequency",
                "mean_monetary",
            ];
            (
                names(&keys),
                list("segments").iter().map(|s| pick(s, &keys)).collect(),
            )
        }
        "cohorts" => {
            let cohorts = list("cohorts");
            let periods = cohorts
                .first()
                .and_then(|c| c["retention_rate"].as_array().map(Vec::len))
                .unwrap_or(0);
            let mut headers = names(&["cohort", "breakdown", "size"]);
            headers.extend((0..periods).map(|k| format!("p{k}")));
            let rows = cohorts
                .iter()
                .map(|c| {
                    let mut row = pick(c, &["cohort", "breakdown", "size"]);
                    row.extend(
                        c["retention_rate"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|r| {
                                r.as_f64()
                                    .map(|r| format!("{:.1}%", r * 100.0))
                                    .unwrap_or_default()
                            }),
                    );
                    row
                })
                .collect();
            (headers, rows)
        }
        "funnel" => {
            let keys = [
                "step",
                "profiles",
                "conversion_from_previous",
                "conversion_from_start",
                "dropped",
            ];
            let mut headers = names(&["breakdown"]);
            headers.extend(names(&keys));
            (headers, rows_by_breakdown(&list("groups"), "steps", &keys))
        }
        "preferences" => {
            let rows = list("top_profiles")
                .iter()
                .map(|p| {
                    let choices = p["preferences"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            format!(
                                "{} ({:.0}%)",
                                cell(&c["value"]),
                                c["share"].as_f64().unwrap_or(0.0) * 100.0
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    vec![cell(&p["profile_id"]), choices]
                })
                .collect();
            (names(&["profile_id", "preferences"]), rows)
        }
        "risk" => {
            let keys = [
                "profile_id",
                "activity_trend",
                "expected_purchases",
                "risk_signals",
            ];
            (
                names(&keys),
                list("at_risk").iter().map(|p| pick(p, &keys)).collect(),
            )
        }
        "paths" => {
            let keys = ["source", "target", "count"];
            let groups = list("breakdowns");
            if groups.is_empty() {
                return (
                    names(&keys),
                    list("links").iter().map(|l| pick(l, &keys)).collect(),
                );
            }
            // With a breakdown, each value's links under it.
            let mut headers = names(&["breakdown"]);
            headers.extend(names(&keys));
            (headers, rows_by_breakdown(&groups, "links", &keys))
        }
        _ => {
            let keys = ["bucket", "breakdown", "value"];
            (
                names(&keys),
                list("points").iter().map(|p| pick(p, &keys)).collect(),
            )
        }
    }
}

fn print_table(headers: &[String], rows: &[Vec<String>]) -> Result<(), crate::stdout::StdoutError> {
    out!("{}", table_text(headers, rows))
}

/// The report's table as a terminal shows it: columns aligned, and what a terminal would act
/// on in a value (a breakdown value is whatever events sent) escaped.
fn table_text(headers: &[String], rows: &[Vec<String>]) -> String {
    let shown = |cells: &[String]| -> Vec<String> {
        cells
            .iter()
            .map(|cell| kith_lake::output::escape_controls(cell))
            .collect()
    };
    let (headers, rows) = (
        shown(headers),
        rows.iter().map(|row| shown(row)).collect::<Vec<_>>(),
    );
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .chain([headers[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut text = line(&headers) + "\n";
    for row in &rows {
        text += &line(row);
        text += "\n";
    }
    text
}

/// What the main table leaves out: the cohort trend and the worst friction points.
fn print_notes(kind: &str, report: &Value) -> Result<(), crate::stdout::StdoutError> {
    match kind {
        "cohorts" if !report["trend"].is_null() => {
            let t = &report["trend"];
            outln!(
                "\nnewer cohorts: {} ({} {:+.2} points per cohort, ± {:.2})",
                shown(&t["verdict"]),
                shown(&t["metric"]),
                t["slope_per_cohort"].as_f64().unwrap_or(0.0) * 100.0,
                t["standard_error"].as_f64().unwrap_or(0.0) * 100.0
            )?;
        }
        "funnel" => {
            let significant: Vec<&Value> = report["friction"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| {
                    f["significant"].as_bool() == Some(true) && f["difference"].as_f64() < Some(0.0)
                })
                .take(5)
                .collect();
            if !significant.is_empty() {
                outln!("\nwhere customers get stuck (worst first, significant only):")?;
                for f in significant {
                    outln!(
                        "  {} for {}: {:.1}% convert vs {:.1}% for the rest, {:.0} more lost than expected (p = {:.2e})",
                        shown(&f["transition"]),
                        shown(&f["breakdown"]),
                        f["conversion"].as_f64().unwrap_or(0.0) * 100.0,
                        f["others_conversion"].as_f64().unwrap_or(0.0) * 100.0,
                        f["excess_drop_off"].as_f64().unwrap_or(0.0),
                        f["p_value"].as_f64().unwrap_or(1.0)
                    )?;
                }
            }
        }
        "rfm" => outln!(
            "\n{} profiles scored as of {}",
            shown(&report["profiles"]),
            shown(&report["as_of"])
        )?,
        // The table lists the first `limit`; how many there are in all, and of each signal.
        "risk" => {
            let counts: Vec<String> = report["signal_counts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|pair| format!("{} {}", shown(&pair[0]), shown(&pair[1])))
                .collect();
            outln!(
                "\n{} of {} profiles flagged as of {} ({})",
                shown(&report["flagged"]),
                shown(&report["profiles"]),
                shown(&report["as_of"]),
                counts.join(", ")
            )?;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// A breakdown value comes from events anyone with a write key sent: what a terminal would
    /// act on in it is shown escaped, and the columns stay aligned.
    #[test]
    fn the_table_escapes_what_a_terminal_would_act_on() {
        let headers = vec!["breakdown".to_string(), "users".to_string()];
        let rows = vec![
            vec!["\u{1b}]0;pwned\u{7}\u{1b}[2J".to_string(), "3".to_string()],
            vec!["ad\u{200b}min".to_string(), "12".to_string()],
        ];
        let text = super::table_text(&headers, &rows);
        assert_eq!(
            text,
            concat!(
                r"breakdown                     users",
                "\n",
                r"\u{1b}]0;pwned\u{7}\u{1b}[2J  3    ",
                "\n",
                r"ad\u{200b}min                 12   ",
                "\n"
            )
        );
    }
}
