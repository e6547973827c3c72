//! A transaction log in one command: CDNOW's master file, as published (whitespace-separated,
//! CRLF, `YYYYMMDD` dates), into `Order Completed` events and profiles.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;

fn cdnow() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kith-clv/tests/fixtures/CDNOW_master.txt")
}

#[test]
fn cdnow_imports_in_one_command_exactly_once_with_every_dollar_accounted_for() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let rejected = dir.path().join("rejected.csv");
    let import = |extra: &[&str]| {
        let file = cdnow();
        let mut args = vec![
            "import",
            "transactions",
            file.to_str().unwrap(),
            "--data-dir",
            data_arg,
            "--rejected",
            rejected.to_str().unwrap(),
            "--json",
        ];
        args.extend(extra);
        let (ok, stdout, stderr) = kith(&args);
        (
            ok,
            serde_json::from_str::<Value>(&stdout).unwrap_or(Value::Null),
            stderr,
        )
    };
    let (ok, summary, stderr) = import(&["--currency", "USD"]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(
            "customer_id → customer, date → date, number_of_cds → quantity, dollar_value → amount"
        ),
        "{stderr}"
    );
    assert_eq!(
        (
            &summary["rows"],
            &summary["stored"],
            &summary["created"],
            &summary["rejected_rows"]
        ),
        (
            &Value::from(69_659),
            &Value::from(69_659),
            &Value::from(23_570),
            &Value::from(0)
        ),
        "{summary}"
    );
    // Totals computed independently from the file: 69,659 purchases by 23,570 customers,
    // $2,500,315.63, from 1997-01-01 to 1998-06-30.
    let (ok, totals, stderr) = kith(&[
        "sql",
        "--data-dir",
        data_arg,
        "--format",
        "csv",
        "SELECT count(*) AS n, count(DISTINCT user_id) AS customers, round(sum(revenue), 2) AS revenue, \
         min(timestamp) AS first, max(timestamp) AS last, min(currency) AS currency FROM events \
         WHERE event = 'Order Completed'",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        totals,
        "n,customers,revenue,first,last,currency\n69659,23570,2500315.63,1997-01-01T00:00:00Z,1998-06-30T00:00:00Z,USD\n"
    );
    // Customer 00001 bought once, for $11.77; customer 00002 twice on 1997-01-12 ($12 and $77).
    let (ok, stdout, _) = kith(&["profile", "show", "user_id:00002", "--data-dir", data_arg]);
    assert!(ok);
    let profile: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(profile["computed_traits"]["order_count"], 2);
    assert_eq!(profile["computed_traits"]["total_revenue"], 89.0);

    // CLV models fitted on the purchases Kith now holds (by profile) equal those fitted on the
    // file itself.
    let fit = |source: &[&str]| {
        let mut args = vec![
            "models",
            "clv",
            "fit",
            "--calibration-end",
            "1997-09-30",
            "--json",
        ];
        args.extend(source);
        let (ok, stdout, stderr) = kith(&args);
        assert!(ok, "{stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    let file = cdnow();
    let (stored, from_file) = (
        fit(&["--data-dir", data_arg]),
        fit(&["--transactions", file.to_str().unwrap()]),
    );
    assert_eq!(stored["customers"], 23_570);
    assert_eq!(stored["repeat_customers"], from_file["repeat_customers"]);
    for model in ["bg_nbd", "pareto_nbd", "mbg_nbd"] {
        let (a, b) = (&stored["models"][model], &from_file["models"][model]);
        for (name, value) in a["params"].as_object().unwrap() {
            let (x, y) = (value.as_f64().unwrap(), b["params"][name].as_f64().unwrap());
            assert!(((x - y) / y).abs() < 1e-6, "{model}.{name}: {x} vs {y}");
        }
    }
    // CDNOW's full log holds $0 purchases: Gamma-Gamma says so instead of fitting.
    assert!(
        stored["models"]["gamma_gamma"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("non-positive monetary value")),
        "{stored}"
    );

    // The same file again stores nothing.
    let (ok, again, stderr) = import(&["--currency", "USD"]);
    assert!(ok, "{stderr}");
    assert_eq!(
        (&again["stored"], &again["already_imported"]),
        (&Value::from(0), &Value::from(69_659))
    );

    // Mistakes are explained before anything is read.
    let (ok, _, stderr) = import(&["--map", "amount=price"]);
    assert!(!ok);
    assert!(
        stderr.contains("the column `price` (mapped to amount) is not in the file; its columns are: customer_id, date, number_of_cds, dollar_value"),
        "{stderr}"
    );
    let odd = dir.path().join("odd.csv");
    std::fs::write(
        &odd,
        "cliente,fecha,monto\nA,2025-01-05,100.5\nB,ayer,3\nC,2025-01-06,\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = kith(&[
        "import",
        "transactions",
        odd.to_str().unwrap(),
        "--data-dir",
        data_arg,
        "--rejected",
        rejected.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (&summary["stored"], &summary["rejected_rows"]),
        (&Value::from(1), &Value::from(2))
    );
    let reasons = std::fs::read_to_string(&rejected).unwrap();
    assert!(reasons.contains("2,fecha,ayer,"), "{reasons}");
    assert!(
        reasons.contains("3,monto,,the amount is missing,row skipped"),
        "{reasons}"
    );
}

#[test]
fn tickets_and_surveys_become_events_of_the_people_they_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let rejected = dir.path().join("rejected.csv");
    // A customer known by email only, first from the helpdesk.
    let tickets = dir.path().join("tickets.csv");
    std::fs::write(
        &tickets,
        "Folio,Correo,Fecha,Asunto,Mensaje,Estado\n\
         T-1,Ana@Example.com,2025-03-01 09:30,Cobro doble,\"Me cobraron dos veces, ¿me ayudan?\",abierto\n\
         T-2,,2025-03-02,Sin cliente,Nadie,cerrado\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = kith(&[
        "import",
        "tickets",
        tickets.to_str().unwrap(),
        "--data-dir",
        data_arg,
        "--timezone",
        "America/Mexico_City",
        "--rejected",
        rejected.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("Correo → email, Fecha → date, Asunto → property:asunto"),
        "{stderr}"
    );
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (&summary["stored"], &summary["rejected_rows"]),
        (&Value::from(1), &Value::from(1))
    );
    let surveys = dir.path().join("nps.csv");
    std::fs::write(
        &surveys,
        "email,fecha,calificacion,comentario\nana@example.com,2025-03-10,3,El soporte nunca respondió\n",
    )
    .unwrap();
    let (ok, _, stderr) = kith(&[
        "import",
        "surveys",
        surveys.to_str().unwrap(),
        "--data-dir",
        data_arg,
        "--rejected",
        rejected.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let (ok, rows, stderr) = kith(&[
        "sql",
        "--data-dir",
        data_arg,
        "--format",
        "csv",
        "SELECT event, source, timestamp, json_get_str(properties, 'asunto') AS subject, \
         json_get_float(properties, 'score') AS score, json_get_str(properties, 'comment') AS comment \
         FROM events ORDER BY timestamp",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        rows,
        "event,source,timestamp,subject,score,comment\n\
         Ticket Created,tickets,2025-03-01T15:30:00Z,Cobro doble,,\n\
         Survey Responded,surveys,2025-03-10T00:00:00Z,,3.0,El soporte nunca respondió\n"
    );
    // JSON Lines name their own keys on each line.
    let orders = dir.path().join("orders.jsonl");
    std::fs::write(
        &orders,
        "{\"email\": \"ana@example.com\", \"customer_id\": \"A-1\", \"date\": \"2025-03-20\", \"total\": 450.5}\n\
         {\"customer_id\": \"A-2\", \"date\": \"2025-03-21\"}\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = kith(&[
        "import",
        "transactions",
        orders.to_str().unwrap(),
        "--data-dir",
        data_arg,
        "--rejected",
        rejected.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (&summary["stored"], &summary["rejected_rows"]),
        (&Value::from(1), &Value::from(1))
    );
    assert!(
        std::fs::read_to_string(&rejected)
            .unwrap()
            .contains("this line has no amount"),
    );

    // The ticket, the survey and the order all joined the one profile of ana@example.com.
    let (ok, stdout, stderr) = kith(&[
        "profile",
        "show",
        "email:ana@example.com",
        "--data-dir",
        data_arg,
    ]);
    assert!(ok, "{stderr}");
    let profile: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(profile["computed_traits"]["event_count"], 3, "{profile}");
    assert_eq!(
        profile["computed_traits"]["total_revenue"], 450.5,
        "{profile}"
    );
}

#[test]
fn a_parquet_order_export_imports_with_its_types() {
    use std::sync::Arc;

    use arrow::array::{Date32Array, Float64Array, Int32Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("order_date", DataType::Date32, false),
        Field::new("quantity", DataType::Int32, true),
        Field::new("total", DataType::Float64, true),
        Field::new("store", DataType::Utf8, true),
    ]));
    // 2025-01-05 is day 20093 since the epoch.
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["c-1", "c-1", "c-2"])),
            Arc::new(Date32Array::from(vec![20093, 20094, 20095])),
            Arc::new(Int32Array::from(vec![Some(2), None, Some(1)])),
            Arc::new(Float64Array::from(vec![Some(100.25), Some(50.0), None])),
            Arc::new(StringArray::from(vec![Some("CDMX"), Some("GDL"), None])),
        ],
    )
    .unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&file).unwrap(), schema, None)
            .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let data = dir.path().join("data");
    let rejected = dir.path().join("rejected.csv");
    let (ok, stdout, stderr) = kith(&[
        "import",
        "transactions",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--currency",
        "MXN",
        "--rejected",
        rejected.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("customer_id → customer, order_date → date, quantity → quantity, total → amount, store → property:store"),
        "{stderr}"
    );
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    // The third order has no amount: kept out, with its reason.
    assert_eq!(
        (&summary["stored"], &summary["rejected_rows"]),
        (&Value::from(2), &Value::from(1))
    );
    let (ok, rows, stderr) = kith(&[
        "sql",
        "--data-dir",
        data.to_str().unwrap(),
        "--format",
        "csv",
        "SELECT user_id, timestamp, revenue, json_get_str(properties, 'store') AS store, \
         json_get_float(properties, 'quantity') AS quantity FROM events ORDER BY timestamp",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        rows,
        "user_id,timestamp,revenue,store,quantity\n\
         c-1,2025-01-05T00:00:00Z,100.25,CDMX,2.0\n\
         c-1,2025-01-06T00:00:00Z,50.0,GDL,\n"
    );
}

#[test]
fn clv_models_fitted_from_the_raw_cdnow_log_match_the_published_estimates() {
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../kith-clv/tests/fixtures/CDNOW_sample.txt");
    let (ok, stdout, stderr) = kith(&[
        "models",
        "clv",
        "fit",
        "--transactions",
        sample.to_str().unwrap(),
        "--columns",
        "master_id,customer_id,date,quantity,amount",
        "--calibration-end",
        "1997-09-30",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (
            &report["customers"],
            &report["repeat_customers"],
            &report["transactions"]
        ),
        (&Value::from(2357), &Value::from(946), &Value::from(6919))
    );
    let close = |got: &Value, want: f64, name: &str| {
        let got = got
            .as_f64()
            .unwrap_or_else(|| panic!("{name} missing: {report}"));
        assert!(
            ((got - want) / want).abs() < 1e-3,
            "{name}: {got} vs {want}"
        );
    };
    let bg = &report["models"]["bg_nbd"];
    for (name, want) in [
        ("r", 0.2426),
        ("alpha", 4.4136),
        ("a", 0.7929),
        ("b", 2.4259),
    ] {
        close(&bg["params"][name], want, name);
    }
    close(&bg["log_likelihood"], -9582.43, "BG/NBD log-likelihood");
    let pareto = &report["models"]["pareto_nbd"];
    for (name, want) in [
        ("r", 0.5533),
        ("alpha", 10.578),
        ("s", 0.6062),
        ("beta", 11.668),
    ] {
        close(&pareto["params"][name], want, name);
    }
    close(
        &pareto["log_likelihood"],
        -9594.98,
        "Pareto/NBD log-likelihood",
    );
    let gg = &report["models"]["gamma_gamma"]["model"];
    for (name, want) in [("p", 6.2488), ("q", 3.7446), ("gamma", 15.4478)] {
        close(&gg["params"][name], want, name);
    }
    // Per-customer predictions: the customer with x = 2, t_x = 30.43, T = 38.86 expects 1.226
    // purchases in the next 39 weeks and is alive with probability 0.7266.
    let dir = tempfile::tempdir().unwrap();
    let predictions = dir.path().join("predictions.csv");
    let (ok, _, stderr) = kith(&[
        "models",
        "clv",
        "fit",
        "--transactions",
        sample.to_str().unwrap(),
        "--columns",
        "master_id,customer_id,date,quantity,amount",
        "--calibration-end",
        "1997-09-30",
        "--predictions",
        predictions.to_str().unwrap(),
        "--horizon",
        "39",
    ]);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(&predictions).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(
            "customer_id,frequency,recency,T,monetary_value,expected_purchases,p_alive,expected_order_value,clv"
        )
    );
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').skip(1).map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 2357);
    let row = rows
        .iter()
        .find(|r| r[0] == 2.0 && (r[1] - 30.43).abs() < 0.005 && (r[2] - 38.86).abs() < 0.005)
        .expect("the reference customer");
    close(
        &Value::from(row[4]),
        1.226,
        "expected purchases in 39 weeks",
    );
    close(&Value::from(row[5]), 0.7266, "probability alive");
    assert!(
        rows.iter().all(|r| r[7].is_finite() && r[7] >= 0.0),
        "every CLV is a number"
    );

    // A file that cannot support a fit says so instead of answering nonsense.
    let tiny = dir.path().join("tiny.csv");
    std::fs::write(
        &tiny,
        "customer_id,date,amount\na,2025-01-01,10\nb,2025-01-02,12\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = kith(&[
        "models",
        "clv",
        "fit",
        "--transactions",
        tiny.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["models"]["bg_nbd"]["error"],
        "too few repeat customers: found 0, need at least 10"
    );
}
