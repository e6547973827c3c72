//! `kith models clv fit --transactions FILE`: buy-till-you-die models fitted on a transaction
//! log, reported as a table or as JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use chrono::NaiveDate;
use clap::{Args, Subcommand, ValueEnum};
use kith_analytics::clv::Purchases;
use kith_analytics::{ClvDefinition, Data};
use kith_clv::summary::{PeriodUnit, SummaryOptions, Transaction, summary_from_transactions};
use kith_clv::{
    BgNbd, ClvOptions, FitOptions, GammaGamma, GammaGammaOptions, ModifiedBgNbd, ParetoNbd, Rfm,
    Spend,
};
use kith_import::transactions::{Columns, LogKind, TransactionField, TransactionImporter, plan};
use kith_import::{Format, RowReader, TimeParser};
use kith_profiles::ProfileStore;
use serde_json::{Value, json};

use super::DataDirArg;
use crate::config::FileConfig;

#[derive(Subcommand)]
pub enum ModelsAction {
    /// Customer lifetime value models.
    Clv {
        #[command(subcommand)]
        action: ClvAction,
    },
}

#[derive(Subcommand)]
pub enum ClvAction {
    /// Fit BG/NBD, Pareto/NBD, MBG/NBD and Gamma-Gamma on the purchases Kith holds (each
    /// attributed to its profile, merges included), or on a transaction file.
    Fit(FitArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Unit {
    Day,
    Week,
    Month,
}

#[derive(Args)]
pub struct FitArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    /// Fit on this transaction log (CSV, or whitespace-separated text like CDNOW's) instead of
    /// the events in the data directory.
    #[arg(long, value_name = "FILE")]
    transactions: Option<PathBuf>,
    /// The purchase event, when fitting on the events Kith holds.
    #[arg(long, default_value = "Order Completed")]
    event: String,
    /// The purchase's value (a typed column or a property), when fitting on the events.
    #[arg(long, default_value = "revenue")]
    value: String,
    /// Write each buyer's scores onto their profile (`clv_expected_purchases_90d`,
    /// `clv_p_alive`, `clv_expected_order_value`, `clv_expected_value_12m`), as the server's
    /// scheduled runs do. Only when fitting on the events Kith holds.
    #[arg(long, conflicts_with = "transactions")]
    write_traits: bool,
    /// Check the fit against what happened after --calibration-end: actual and predicted
    /// repeat purchases by calibration frequency, and the cumulative and weekly tracking of
    /// actual against expected repeat purchases.
    #[arg(long, requires = "calibration_end")]
    diagnostics: bool,
    /// What a column holds: FIELD=COLUMN (customer, date, amount). Columns named customer_id,
    /// date, amount/dollar_value/revenue are recognised.
    #[arg(long = "map", value_name = "FIELD=COLUMN")]
    map: Vec<String>,
    /// Names for the columns of a file without a header line, comma-separated.
    #[arg(long, value_delimiter = ',')]
    columns: Vec<String>,
    /// csv or whitespace [default: from the file name]
    #[arg(long)]
    format: Option<String>,
    /// strftime format of the dates [default: ISO dates, YYYYMMDD]
    #[arg(long)]
    time_format: Option<String>,
    /// The period purchases are collapsed into.
    #[arg(long, value_enum, default_value = "day")]
    unit: Unit,
    /// Divides recency and age: `--unit day --multiplier 7` measures time in weeks (CDNOW's
    /// convention).
    #[arg(long, default_value_t = 7.0)]
    multiplier: f64,
    /// Last day of the calibration period (YYYY-MM-DD) [default: the last purchase]
    #[arg(long)]
    calibration_end: Option<String>,
    /// L2 penalty on the parameters.
    #[arg(long, default_value_t = 0.0)]
    penalizer: f64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Write per-customer predictions (BG/NBD and Gamma-Gamma) to this CSV file.
    #[arg(long, value_name = "FILE")]
    predictions: Option<PathBuf>,
    /// Horizon of the predicted purchases, in model time units (weeks with the defaults).
    #[arg(long, default_value_t = 12.0, allow_negative_numbers = true)]
    horizon: f64,
    /// CLV horizon in months.
    #[arg(long, default_value_t = 12)]
    clv_months: u32,
    /// Monthly discount rate of the CLV: the value of the n-th month ahead is divided by
    /// (1 + rate)^n.
    #[arg(long, default_value_t = 0.01)]
    discount_rate: f64,
}

pub fn run(action: ModelsAction, file: FileConfig) -> anyhow::Result<ExitCode> {
    let ModelsAction::Clv {
        action: ClvAction::Fit(args),
    } = action;
    fit(args, file)
}

/// The purchases in the data directory, each under the profile it belongs to now (the
/// attribution every analysis uses), and the directory's profiles to write scores onto.
fn stored_purchases(
    definition: &ClvDefinition,
    args: &FitArgs,
    file: &FileConfig,
) -> anyhow::Result<(Purchases, ProfileStore)> {
    let data_dir = file.data_dir(args.data_dir.data_dir.clone());
    super::existing_data_dir(
        &data_dir,
        "pass --data-dir, or --transactions FILE to fit on a file",
    )?;
    let settings = file.profile_settings()?;
    let limits = file.model_run_limits()?;
    super::runtime()?.block_on(async {
        let (lake, profiles) = super::sql::open_consistent(&data_dir, settings).await?;
        let data = Data::new(
            &lake,
            vec![kith_server::profiles::identity_table(&profiles)],
            limits,
        )
        .with_profiles(std::sync::Arc::new(kith_server::profiles::ProfileViews(
            &profiles,
        )));
        let purchases = definition
            .purchases(&data)
            .await
            .map_err(|e| anyhow::anyhow!(kith_server::models::explain_run_error(&e)));
        drop(data);
        Ok((purchases?, profiles))
    })
}

fn read_transactions(
    args: &FitArgs,
    path: &std::path::Path,
) -> anyhow::Result<(Vec<Transaction<String>>, u64)> {
    let format = match &args.format {
        Some(name) => Format::from_name(name).with_context(|| {
            format!("`{name}` is not a format kith reads; use csv or whitespace")
        })?,
        None => Format::from_path(path).with_context(|| {
            format!(
                "cannot tell the format of {} from its name; pass --format csv or whitespace",
                path.display()
            )
        })?,
    };
    let columns = (!args.columns.is_empty()).then(|| args.columns.clone());
    let mut reader = RowReader::open_with_columns(path, format, None, columns)?;
    let explicit = args
        .map
        .iter()
        .map(|text| {
            let (field, column) = text
                .split_once('=')
                .ok_or_else(|| kith_import::MappingError::NotAnAssignment(text.clone()))?;
            Ok((TransactionField::parse(field)?, column.trim().to_string()))
        })
        .collect::<Result<Vec<_>, kith_import::MappingError>>()?;
    let Some(headers) = reader.headers().map(<[String]>::to_vec) else {
        bail!("a JSONL transaction log is not supported here; use CSV");
    };
    let importer = TransactionImporter::new(
        LogKind::Transactions,
        Columns::Fixed(plan(LogKind::Transactions, &headers, &explicit, true)?),
        TimeParser::new(args.time_format.clone(), None)?,
        "clv".into(),
        "Order Completed".into(),
        None,
    );
    let (mut transactions, mut rejected) = (Vec::new(), 0u64);
    while let Some(next) = reader.next_row()? {
        let event = match next {
            Ok(row) => importer.row(&row).event,
            Err(_) => None,
        };
        match event {
            Some(e) => transactions.push(Transaction::new(
                e.user_id.unwrap_or_default(),
                e.timestamp.naive_utc(),
                e.typed.revenue.unwrap_or(0.0),
            )),
            None => rejected += 1,
        }
    }
    Ok((transactions, rejected))
}

/// One row a customer: their summary, expected purchases over the horizon, probability of
/// being alive, expected order value and discounted CLV.
fn write_predictions(
    path: &std::path::Path,
    summary: &[kith_clv::summary::CustomerSummary<&String>],
    bg: &BgNbd,
    gg: &GammaGamma,
    horizon: f64,
    clv: &ClvOptions,
) -> anyhow::Result<()> {
    use std::io::Write;
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    writeln!(
        out,
        "customer_id,frequency,recency,T,monetary_value,expected_purchases,p_alive,expected_order_value,clv"
    )?;
    for customer in summary {
        let rfm = customer.rfm();
        let expected = bg
            .conditional_expected_purchases(horizon, &rfm)
            .unwrap_or(f64::NAN);
        let order_value =
            gg.conditional_expected_average_profit(customer.frequency, customer.monetary_value);
        let value = gg
            .customer_lifetime_value(bg, &rfm, customer.monetary_value, clv)
            .unwrap_or(f64::NAN);
        writeln!(
            out,
            "{},{},{},{},{:.4},{:.6},{:.6},{:.4},{:.4}",
            customer.customer_id,
            customer.frequency,
            customer.recency,
            customer.t,
            customer.monetary_value,
            expected,
            bg.probability_alive(&rfm),
            order_value,
            value
        )?;
    }
    out.flush()?;
    Ok(())
}

/// What BG/NBD expects of a new customer over `horizon` time units: expected repeat purchases
/// after each whole unit (the expected population curve, per customer acquired) and the
/// probability of exactly 0…10 purchases.
fn population(bg: &BgNbd, horizon: f64) -> anyhow::Result<Value> {
    let units = horizon.ceil().clamp(1.0, 10_000.0) as u32;
    let curve = (1..=units)
        .map(|t| {
            bg.expected_purchases(f64::from(t))
                .map(|e| json!({"t": t, "expected_purchases": e}))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("the population curve: {e}"))?;
    let counts = (0..=10)
        .map(|n| bg.probability_of_purchases(n, horizon))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("purchase count probabilities: {e}"))?;
    Ok(json!({"horizon": horizon, "curve": curve, "purchase_count_probabilities": counts}))
}

fn penalized<P>(penalizer_coef: f64) -> FitOptions<P> {
    FitOptions {
        penalizer_coef,
        ..FitOptions::default()
    }
}

fn fit(args: FitArgs, file: FileConfig) -> anyhow::Result<ExitCode> {
    let calibration_end = match &args.calibration_end {
        Some(text) => Some(
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .with_context(|| format!("--calibration-end must be YYYY-MM-DD, got `{text}`"))?
                .and_time(chrono::NaiveTime::MIN),
        ),
        None => None,
    };
    let (transactions, scoring) = match &args.transactions {
        Some(path) => {
            let (transactions, rejected) = read_transactions(&args, path)?;
            if rejected > 0 {
                eprintln!("{rejected} rows could not be read and were left out");
            }
            (transactions, None)
        }
        None => {
            let definition = ClvDefinition {
                purchase_event: args.event.clone(),
                value: args.value.clone(),
                ..ClvDefinition::default()
            };
            let (purchases, profiles) = stored_purchases(&definition, &args, &file)?;
            let transactions = purchases.transactions.clone();
            (transactions, Some((definition, purchases, profiles)))
        }
    };
    if transactions.is_empty() {
        bail!("no purchases to fit on (event `{}`)", args.event);
    }
    // Diagnostics fit on the calibration window and compare with what came after it.
    let observation_end = calibration_end;
    let options = SummaryOptions {
        unit: match args.unit {
            Unit::Day => PeriodUnit::Day,
            Unit::Week => PeriodUnit::Week,
            Unit::Month => PeriodUnit::Month,
        },
        multiplier: args.multiplier,
        observation_end,
    };
    let summary = summary_from_transactions(&transactions, &options)?;
    let rfm: Vec<Rfm> = summary.iter().map(|c| c.rfm()).collect();
    let spend: Vec<Spend> = summary.iter().map(|c| c.spend()).collect();
    let repeaters = rfm.iter().filter(|r| r.frequency > 0.0).count();
    let bg_fit = BgNbd::fit(&rfm, &penalized(args.penalizer));
    let gg_fit = GammaGamma::fit(
        &spend,
        &GammaGammaOptions {
            fit: penalized(args.penalizer),
            ..GammaGammaOptions::default()
        },
    );
    if let Some(path) = &args.predictions {
        let (Ok(bg), Ok(gg)) = (&bg_fit, &gg_fit) else {
            bail!("predictions need both BG/NBD and Gamma-Gamma fits; see the errors with --json");
        };
        let periods_per_month = match args.unit {
            Unit::Day => ClvOptions::DAYS_PER_MONTH / args.multiplier,
            Unit::Week => ClvOptions::WEEKS_PER_MONTH,
            Unit::Month => 1.0,
        };
        let clv_options = ClvOptions {
            months: args.clv_months,
            monthly_discount_rate: args.discount_rate,
            periods_per_month,
        };
        write_predictions(
            path,
            &summary,
            &bg.params,
            &gg.model.params,
            args.horizon,
            &clv_options,
        )?;
        eprintln!(
            "predictions for {} customers written to {}",
            summary.len(),
            path.display()
        );
    }
    let mut models = serde_json::Map::new();
    let mut record = |name: &str, fitted: Result<Value, kith_clv::FitError>| {
        let value = fitted.unwrap_or_else(|e| json!({"error": e.to_string()}));
        models.insert(name.to_string(), value);
    };
    record(
        "bg_nbd",
        bg_fit.as_ref().map(|f| json!(f)).map_err(Clone::clone),
    );
    record(
        "pareto_nbd",
        ParetoNbd::fit(&rfm, &penalized(args.penalizer)).map(|f| json!(f)),
    );
    record(
        "mbg_nbd",
        ModifiedBgNbd::fit(&rfm, &penalized(args.penalizer)).map(|f| json!(f)),
    );
    record("gamma_gamma", gg_fit.map(|f| json!(f)));
    let diagnostics = match (&args.diagnostics, &bg_fit, calibration_end) {
        (true, Ok(bg), Some(end)) => Some(super::models_diagnostics::diagnose(
            &bg.params,
            &transactions,
            end,
            &options,
        )?),
        (true, Err(e), _) => bail!("diagnostics need a BG/NBD fit, which failed: {e}"),
        _ => None,
    };
    let written = match scoring {
        Some((definition, mut purchases, profiles)) if args.write_traits => {
            // Scores are as of the calibration end when one is given (ages and P(alive) are
            // measured to it), else as of now.
            if let Some(end) = calibration_end {
                purchases.as_of = end.and_utc();
                purchases.transactions.retain(|t| t.at <= end);
            }
            let run = definition
                .score(&purchases)
                .map_err(|e| anyhow::anyhow!("scoring the buyers failed: {e}"))?;
            let report = serde_json::to_value(&run.report)?;
            let written = profiles
                .model_traits()
                .replace(
                    "clv",
                    &definition.trait_names(),
                    &report,
                    run.profile_traits(),
                )
                .context("writing the scores onto the profiles failed")?;
            Some(json!({"profiles": written.profiles, "traits": written.trait_names}))
        }
        _ => None,
    };
    let mut report = json!({
        "customers": summary.len(),
        "repeat_customers": repeaters,
        "transactions": transactions.len(),
        "models": models,
    });
    if let Ok(bg) = &bg_fit {
        report["population"] = population(&bg.params, args.horizon)?;
    }
    if let Some(d) = &diagnostics {
        report["diagnostics"] = serde_json::to_value(d)?;
    }
    if let Some(w) = &written {
        report["traits_written"] = w.clone();
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{} customers ({} with repeat purchases), {} transactions",
        summary.len(),
        repeaters,
        transactions.len()
    )?;
    outln!("{:<12} {:>14}  parameters", "model", "log-lik")?;
    for (name, value) in &models {
        let fitted = value.get("model").unwrap_or(value);
        match (fitted.get("params"), fitted.get("log_likelihood")) {
            (Some(params), Some(ll)) => {
                let params: Vec<String> = params
                    .as_object()
                    .map(|p| {
                        p.iter()
                            .map(|(k, v)| format!("{k}={:.4}", v.as_f64().unwrap_or(f64::NAN)))
                            .collect()
                    })
                    .unwrap_or_default();
                outln!(
                    "{name:<12} {:>14.2}  {}",
                    ll.as_f64().unwrap_or(f64::NAN),
                    params.join(" ")
                )?;
            }
            _ => outln!(
                "{name:<12} {:>14}  {}",
                "-",
                value["error"].as_str().unwrap_or("no fit")
            )?,
        }
    }
    if let Some(d) = &diagnostics {
        outln!()?;
        out!("{}", d.table())?;
    }
    if let Some(w) = &written {
        outln!(
            "\nscores written onto {} profiles: {}",
            w["profiles"],
            w["traits"]
                .as_array()
                .map(|t| t
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
