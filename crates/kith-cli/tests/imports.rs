//! File imports beyond one kind: flat event exports through a column mapping, and an import
//! killed halfway that continues where it stopped.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn import(
    kind: &str,
    file: &Path,
    data: &Path,
    rejected: &Path,
    extra: &[&str],
) -> (bool, Value, String) {
    let mut args = vec![
        "import",
        kind,
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--rejected",
        rejected.to_str().unwrap(),
        "--json",
    ];
    args.extend(extra);
    let (ok, stdout, stderr) = kith(&args);
    (
        ok,
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr,
    )
}

#[test]
fn a_flat_csv_export_becomes_the_events_it_describes() {
    let dir = tempfile::tempdir().unwrap();
    let (data, file, rejected) = (
        dir.path().join("data"),
        dir.path().join("actividad.csv"),
        dir.path().join("rejected.csv"),
    );
    std::fs::write(
        &file,
        "Fecha;Cliente;Dispositivo;Acción;Tipo;Monto;CP;Plan\n\
         01/03/2025 10:00;c-1;d-9;Order Completed;track;199.50;01234;\n\
         01/03/2025 10:05;c-1;d-9;Precios;page;;;\n\
         02/03/2025 09:00;;d-7;Product Viewed;track;;;\n\
         02/03/2025 09:30;c-2;;;identify;;;oro\n\
         ayer;c-3;;Order Completed;track;5;;\n\
         03/03/2025 12:00;;;Order Completed;track;5;;\n\
         03/03/2025 12:30;c-4;;;track;;;\n",
    )
    .unwrap();
    let flags = [
        "--delimiter",
        ";",
        "--map",
        "anonymous_id=Dispositivo",
        "--map",
        "property:zip=CP",
        "--time-format",
        "%d/%m/%Y %H:%M",
        "--timezone",
        "America/Mexico_City",
        "--source",
        "tienda",
    ];
    let (ok, summary, stderr) = import("events", &file, &data, &rejected, &flags);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("Fecha → timestamp, Cliente → user_id, Dispositivo → anonymous_id, Acción → event, Tipo → type, Monto → property:monto, CP → property:zip, Plan → property:plan"),
        "{stderr}"
    );
    assert_eq!(
        (
            &summary["rows"],
            &summary["stored"],
            &summary["rejected_rows"]
        ),
        (&Value::from(7), &Value::from(4), &Value::from(3)),
        "{summary}"
    );
    let reasons = std::fs::read_to_string(&rejected).unwrap();
    assert!(reasons.contains("5,Fecha,ayer,"), "{reasons}");
    assert!(
        reasons.contains("6,Cliente,,missing_identity:"),
        "{reasons}"
    );
    assert!(reasons.contains("7,Acción,,missing_event:"), "{reasons}");

    let rows = sql(
        &data,
        "SELECT type, event, user_id, anonymous_id, source, \
         CAST(timestamp AS VARCHAR) AS at, json_get_str(properties, 'zip'), \
         json_get_float(properties, 'monto'), json_get_str(traits, 'plan') \
         FROM events ORDER BY timestamp",
    );
    let row = |cells: &[&str]| cells.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rows,
        vec![
            row(&[
                "track",
                "Order Completed",
                "c-1",
                "d-9",
                "tienda",
                "2025-03-01T16:00:00Z",
                "01234",
                "199.5",
                ""
            ]),
            row(&[
                "page",
                "Precios",
                "c-1",
                "d-9",
                "tienda",
                "2025-03-01T16:05:00Z",
                "",
                "",
                ""
            ]),
            row(&[
                "track",
                "Product Viewed",
                "",
                "d-7",
                "tienda",
                "2025-03-02T15:00:00Z",
                "",
                "",
                ""
            ]),
            row(&[
                "identify",
                "",
                "c-2",
                "",
                "tienda",
                "2025-03-02T15:30:00Z",
                "",
                "",
                "oro"
            ]),
        ]
    );

    // The same file again stores nothing: ids come from the rows.
    let (ok, again, stderr) = import("events", &file, &data, &rejected, &flags);
    assert!(ok, "{stderr}");
    assert_eq!(
        (&again["stored"], &again["already_imported"]),
        (&Value::from(0), &Value::from(4))
    );

    // A mapping that names a column the file lacks says which, and what there is.
    let (ok, _, stderr) = import(
        "events",
        &file,
        &data,
        &rejected,
        &["--delimiter", ";", "--map", "event=Evento"],
    );
    assert!(!ok);
    assert!(
        stderr.contains("the column `Evento` (mapped to event) is not in the file; its columns are: Fecha, Cliente"),
        "{stderr}"
    );
}

#[test]
fn an_import_killed_halfway_continues_where_it_stopped_and_stores_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let (data, file, rejected) = (
        dir.path().join("data"),
        dir.path().join("orders.csv"),
        dir.path().join("rejected.csv"),
    );
    let rows = 60_000u64;
    // Every order has two identical lines, half the file apart: the resumed run must count the
    // first lines it skipped to tell the second ones from them.
    let mut text = String::from("customer_id,date,amount,order_id\n");
    for n in 1..=rows {
        let k = n % (rows / 2);
        // Two bad rows, one early and one late, must each be reported exactly once.
        if n == 5 || n == rows - 5 {
            text.push_str(&format!("c{},not a date,1,o{k}\n", k % 997));
        } else {
            text.push_str(&format!(
                "c{},2024-{:02}-{:02},{}.5,o{k}\n",
                k % 997,
                1 + k % 12,
                1 + k % 28,
                k % 300
            ));
        }
    }
    std::fs::write(&file, text).unwrap();
    let checkpoint = dir.path().join("orders.csv.import-progress.json");

    let mut child = Command::new(kith_bin())
        .args([
            "import",
            "transactions",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--rejected",
            rejected.to_str().unwrap(),
        ])
        .env("KITH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let rows_done = loop {
        let progress = std::fs::read_to_string(&checkpoint)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        if let Some(done) = progress.and_then(|p| p["rows_done"].as_u64()) {
            break done;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import finished before a checkpoint was seen; make the file larger"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(rows_done > 0 && rows_done < rows, "{rows_done}");

    // The same file into another data directory is another import: read from its start, every
    // row stored there (a resume would skip rows that directory never received).
    let saved = std::fs::read_to_string(&checkpoint).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    // Its rejected rows beside the first import's, so its checkpoint is the same file.
    let rejected_elsewhere = dir.path().join("rejected-elsewhere.csv");
    let (ok, summary, stderr) = import("transactions", &file, &elsewhere, &rejected_elsewhere, &[]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("from its start") && stderr.contains("into another data directory"),
        "{stderr}"
    );
    assert_eq!(summary["resumed_after"], 0, "{summary}");
    assert_eq!(
        sql(&elsewhere, "SELECT count(*) FROM events"),
        vec![vec![(rows - 2).to_string()]]
    );
    std::fs::write(&checkpoint, saved).unwrap();

    let (ok, summary, stderr) = import("transactions", &file, &data, &rejected, &[]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("continuing the interrupted import"),
        "{stderr}"
    );
    let resumed_after = summary["resumed_after"].as_u64().unwrap();
    assert!(resumed_after >= rows_done, "{summary}");
    // The totals cover both runs; rows written after the last checkpoint count as already
    // imported the second time, never twice.
    assert_eq!(summary["rows"], rows, "{summary}");
    assert_eq!(summary["rejected_rows"], 2, "{summary}");
    let stored = summary["stored"].as_u64().unwrap();
    let again = summary["already_imported"].as_u64().unwrap();
    assert_eq!(stored + again, rows - 2, "{summary}");
    assert_eq!(
        sql(
            &data,
            "SELECT count(*), count(DISTINCT message_id) FROM events"
        ),
        vec![vec![(rows - 2).to_string(), (rows - 2).to_string()]]
    );
    let reasons = std::fs::read_to_string(&rejected).unwrap();
    assert_eq!(
        reasons.lines().filter(|l| l.starts_with("5,date")).count(),
        1,
        "{reasons}"
    );
    assert_eq!(
        reasons
            .lines()
            .filter(|l| l.starts_with(&format!("{},date", rows - 5)))
            .count(),
        1,
        "{reasons}"
    );
    assert!(
        !checkpoint.exists(),
        "a finished import leaves no checkpoint"
    );

    // A finished import has nothing to continue: a third run reads everything again.
    let (ok, third, stderr) = import("transactions", &file, &data, &rejected, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(
        (
            &third["resumed_after"],
            &third["stored"],
            &third["already_imported"]
        ),
        (&Value::from(0), &Value::from(0), &Value::from(rows - 2))
    );
}

#[test]
fn a_toml_mapping_file_drives_any_kind_of_import_and_flags_win_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, file, rejected, mapping) = (
        dir.path().join("data"),
        dir.path().join("ventas.csv"),
        dir.path().join("rejected.csv"),
        dir.path().join("ventas.toml"),
    );
    std::fs::write(
        &file,
        "Cliente;Fecha;Total;Notas\nc-1;02/01/2025;150,5;llamar\nc-2;03/01/2025;80;\n",
    )
    .unwrap();
    std::fs::write(
        &mapping,
        r#"
delimiter = ";"
time_format = "%d/%m/%Y"
timezone = "America/Mexico_City"
source = "tienda"
ignore = ["Notas"]

[map]
customer = "Cliente"
amount = "Total"
"#,
    )
    .unwrap();
    let mapping_arg = mapping.to_str().unwrap();
    let (ok, summary, stderr) = import(
        "transactions",
        &file,
        &data,
        &rejected,
        &["--mapping", mapping_arg, "--source", "pos"],
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("Cliente → customer, Fecha → date, Total → amount, Notas → ignored"),
        "{stderr}"
    );
    assert_eq!(summary["stored"], 2, "{summary}");
    assert_eq!(
        sql(
            &data,
            "SELECT user_id, source, CAST(timestamp AS VARCHAR) AS at, revenue, \
             json_get_str(properties, 'notas') FROM events ORDER BY user_id"
        ),
        vec![
            vec!["c-1", "pos", "2025-01-02T06:00:00Z", "150.5", ""],
            vec!["c-2", "pos", "2025-01-03T06:00:00Z", "80.0", ""],
        ]
        .into_iter()
        .map(|r| r.into_iter().map(str::to_string).collect::<Vec<_>>())
        .collect::<Vec<_>>()
    );

    // The same file format drives an events import, naming the event with --event.
    let (ok, summary, stderr) = import(
        "events",
        &file,
        &data,
        &rejected,
        &[
            "--mapping",
            mapping_arg,
            "--event",
            "Venta",
            "--map",
            "user_id=Cliente",
        ],
    );
    assert!(!ok, "the [map] names transaction fields: {summary}");
    assert!(
        stderr.contains("`amount` is not a field a column can map to; use type, event"),
        "{stderr}"
    );
}

// A helpdesk export without a header line, its columns named by `--columns`: tickets name their
// customer by id or, where the id cell is empty, by email. Misnamed columns are refused before
// anything is read.
#[test]
fn a_file_without_a_header_line_is_read_by_the_columns_named_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rejected = dir.path().join("rejected.csv");
    let file = dir.path().join("helpdesk.csv");
    std::fs::write(
        &file,
        "c-7,,2026-11-02,Envío tardío\n,ana@example.com,2026-11-03,Factura\n,,2026-11-04,?\n",
    )
    .unwrap();
    let columns = ["--columns", "customer_id,correo,fecha,asunto"];
    let (ok, summary, stderr) = import("tickets", &file, &data, &rejected, &columns);
    assert!(ok, "{stderr}");
    assert_eq!(
        (&summary["stored"], &summary["rejected_rows"]),
        (&Value::from(2), &Value::from(1)),
        "{summary}"
    );
    let rows = sql(
        &data,
        "SELECT coalesce(user_id, ''), coalesce(email, ''), json_get_str(properties, 'asunto') \
         FROM events ORDER BY timestamp",
    );
    assert_eq!(
        rows,
        vec![
            vec!["c-7", "", "Envío tardío"],
            vec!["", "ana@example.com", "Factura"]
        ]
    );
    let refused = std::fs::read_to_string(&rejected).unwrap();
    assert!(
        refused.contains("the row names no customer (no id and no email)"),
        "{refused}"
    );

    for (kind, named, expected) in [
        (
            "tickets",
            "customer_id,,fecha,asunto",
            "--columns: name 2 of 4 is empty",
        ),
        (
            "tickets",
            "fecha,correo,fecha,asunto",
            "--columns names `fecha` twice",
        ),
        ("events", "a,b", "a JSONL file names its own"),
    ] {
        let file = if kind == "events" {
            let events = dir.path().join("events.jsonl");
            std::fs::write(&events, "{\"type\": \"track\"}\n").unwrap();
            events
        } else {
            file.clone()
        };
        let (ok, _, stderr) = import(kind, &file, &data, &rejected, &["--columns", named]);
        assert!(!ok, "{named}");
        assert!(stderr.contains(expected), "{named}: {stderr}");
    }
}

// A directory given as the file to import, or a file as the data directory to load a demo world
// into, is named as such.
#[test]
fn a_directory_for_a_file_and_a_file_for_a_directory_are_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rejected = dir.path().join("rejected.csv");
    let (ok, _, stderr) = import("contacts", dir.path(), &data, &rejected, &[]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{} is a directory; give the file to import",
            dir.path().display()
        )),
        "{stderr}"
    );
    let file = dir.path().join("afile");
    std::fs::write(&file, "x").unwrap();
    let into = file.to_str().unwrap();
    let (ok, _, stderr) = kith(&["demo", "generate", "--customers", "10", "--into", into]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("{into} is a file, not a data directory")),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    // A negative number is read as the value it is, and refused as one, not as a flag.
    let out = dir.path().join("world");
    let out = out.to_str().unwrap();
    let (ok, _, stderr) = kith(&["demo", "generate", "--customers", "-1", "--out", out]);
    assert!(!ok);
    assert!(
        stderr.contains("invalid value '-1' for '--customers"),
        "{stderr}"
    );
}

// An import's `--source` is held to the rules of a key's: not Kith's own, short, printable.
#[test]
fn an_imports_source_is_held_to_the_rules_of_a_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rejected = dir.path().join("rejected.csv");
    let file = dir.path().join("contacts.csv");
    std::fs::write(&file, "email\nana@example.com\n").unwrap();
    let long = "s".repeat(101);
    for (source, expected) in [
        ("kith", "--source: the source name `kith` is reserved"),
        (
            long.as_str(),
            "--source: the source name is 101 characters long",
        ),
        (
            "we\nb",
            "--source: the source name holds a control or invisible character",
        ),
    ] {
        let (ok, _, stderr) = import("contacts", &file, &data, &rejected, &["--source", source]);
        assert!(!ok, "{source}");
        assert!(stderr.contains(expected), "{source}: {stderr}");
    }
    let (ok, summary, stderr) = import(
        "contacts",
        &file,
        &data,
        &rejected,
        &["--source", "crm export"],
    );
    assert!(ok, "{stderr}");
    assert_eq!(summary["created"], 1, "{summary}");
}

/// The summary shows the first few problems and says how many more the rejected rows hold; a
/// run without problems leaves no earlier run's rejected rows behind to be taken for its own.
#[test]
fn rejected_rows_are_counted_in_the_summary_and_a_clean_run_leaves_none() {
    let dir = tempfile::tempdir().unwrap();
    let (data, file) = (dir.path().join("data"), dir.path().join("contactos.csv"));
    let rejected = dir.path().join("contactos.csv.rejected.csv");
    let mut text = String::from("correo,nombre\nana@x.mx,Ana\n");
    for n in 0..7 {
        text.push_str(&format!(",Sin correo {n}\n"));
    }
    std::fs::write(&file, text).unwrap();
    let (ok, stdout, stderr) = kith(&[
        "import",
        "contacts",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--rejected",
        rejected.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.matches("\n  row ").count(), 5, "{stdout}");
    assert!(
        stdout.contains(&format!("  … and 2 more in {}", rejected.display())),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(&rejected).unwrap().lines().count(),
        1 + 7
    );

    std::fs::write(&file, "correo,nombre\nana@x.mx,Ana\nbea@x.mx,Bea\n").unwrap();
    let (ok, summary, stderr) = import("contacts", &file, &data, &rejected, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(summary["rejected_rows"], 0, "{summary}");
    assert!(
        !rejected.exists(),
        "the first run's rejected rows are still there"
    );
}

/// Segment-shaped lines whose times have no offset are read in `--timezone` (as flat files
/// are); times with an offset keep theirs; without the flag they are UTC, as over HTTP.
#[test]
fn segment_lines_without_offsets_are_read_in_the_timezone_given() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eventos.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"type":"track","userId":"j2","event":"Compra","timestamp":"2024-02-01T10:00:00"}"#,
            "\n",
            r#"{"type":"track","userId":"j3","event":"Compra","timestamp":"2024-02-01T10:00:00+01:00"}"#,
            "\n"
        ),
    )
    .unwrap();
    let times = |data: &Path| {
        sql(
            data,
            "SELECT user_id, CAST(timestamp AS VARCHAR) FROM events ORDER BY user_id",
        )
    };
    let zoned = dir.path().join("zoned");
    let (ok, _, stderr) = import(
        "events",
        &file,
        &zoned,
        &dir.path().join("r1.csv"),
        &["--timezone", "America/Mexico_City"],
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        times(&zoned),
        vec![
            vec!["j2".to_string(), "2024-02-01T16:00:00Z".to_string()],
            vec!["j3".to_string(), "2024-02-01T09:00:00Z".to_string()],
        ]
    );
    let plain = dir.path().join("plain");
    let (ok, _, stderr) = import("events", &file, &plain, &dir.path().join("r2.csv"), &[]);
    assert!(ok, "{stderr}");
    assert_eq!(times(&plain)[0][1], "2024-02-01T10:00:00Z");
}

/// A transaction log as Excel saves it in Spanish: Windows-1252, semicolons, decimal commas.
/// Every amount is read in the file's convention (a lone `1.234` is 1,234 there) and every
/// accent survives.
#[test]
fn an_excel_export_in_spanish_is_read_with_its_encoding_and_decimal_commas() {
    let dir = tempfile::tempdir().unwrap();
    let (data, file) = (dir.path().join("data"), dir.path().join("ventas.csv"));
    let text = "Cliente;Fecha;Total;Sucursal\r\n\
                C1;07/12/2025;1.234;Querétaro\r\n\
                C1;08/12/2025;1.234,50;Querétaro\r\n\
                C2;09/12/2025;350,5;León\r\n";
    // é and ó are one byte each in Windows-1252 (as in Latin-1), which is not UTF-8.
    let bytes: Vec<u8> = text.chars().map(|c| u8::try_from(c).unwrap()).collect();
    std::fs::write(&file, &bytes).unwrap();
    let (ok, summary, stderr) = import(
        "transactions",
        &file,
        &data,
        &dir.path().join("rejected.csv"),
        &["--time-format", "%d/%m/%Y"],
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("is not UTF-8; reading it as windows-1252"),
        "{stderr}"
    );
    assert_eq!(summary["stored"], 3, "{summary}");
    assert_eq!(
        sql(
            &data,
            "SELECT user_id, revenue, json_get_str(properties, 'sucursal') FROM events \
             ORDER BY timestamp"
        ),
        vec![
            vec![
                "C1".to_string(),
                "1234.0".to_string(),
                "Querétaro".to_string()
            ],
            vec![
                "C1".to_string(),
                "1234.5".to_string(),
                "Querétaro".to_string()
            ],
            vec!["C2".to_string(), "350.5".to_string(), "León".to_string()],
        ]
    );
}

/// A row whose event would be larger than an event may be over HTTP (32 KB) is refused with the
/// reason, and its neighbours are stored: a cell holding a document would make events queries
/// cannot join or sort.
#[test]
fn a_row_larger_than_an_event_may_be_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, file) = (dir.path().join("data"), dir.path().join("tickets.csv"));
    let rejected = dir.path().join("tickets.rejected.csv");
    std::fs::write(
        &file,
        format!(
            "cliente,fecha,cuerpo\nc1,2024-01-05,corto\nc2,2024-01-06,{}\nc3,2024-01-07,otro\n",
            "x".repeat(40_000)
        ),
    )
    .unwrap();
    let (ok, summary, stderr) = import("tickets", &file, &data, &rejected, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(
        (&summary["stored"], &summary["rejected_rows"]),
        (&Value::from(2), &Value::from(1)),
        "{summary}"
    );
    let reasons = std::fs::read_to_string(&rejected).unwrap();
    assert!(
        reasons.contains("events may be at most 32768 bytes"),
        "{reasons}"
    );
}

/// A transaction log imported again with one setting corrected (here the time zone) would store
/// every order a second time, since an imported row's event id follows the settings. The data
/// directory's ledger finds it before anything is written and says what differs; `--keep-both`
/// stores them anyway. A setting that leaves the ids alone (the time format) is told that the
/// rows keep the first reading, and the same settings again import nothing.
#[test]
fn a_log_imported_again_with_other_settings_is_refused_before_it_doubles_the_orders() {
    let dir = tempfile::tempdir().unwrap();
    let (data, file) = (dir.path().join("data"), dir.path().join("ventas.csv"));
    let rejected = dir.path().join("ventas.rejected.csv");
    std::fs::write(
        &file,
        "cliente,fecha,monto\nC1,2025-12-07 10:00,100\nC2,2025-12-07 11:00,250\nC1,2025-12-08 09:30,80\nC3,ayer,5\n",
    )
    .unwrap();
    let orders = |data: &Path| {
        sql(
            data,
            "SELECT count(*), sum(revenue) FROM events WHERE event = 'Order Completed'",
        )
    };
    let (ok, summary, stderr) = import("transactions", &file, &data, &rejected, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(summary["stored"], 3, "{summary}");
    let first_rejects = std::fs::read_to_string(&rejected).unwrap();
    assert!(first_rejects.contains("ayer"), "{first_rejects}");

    let (ok, _, stderr) = import(
        "transactions",
        &file,
        &data,
        &rejected,
        &["--timezone", "America/Mexico_City"],
    );
    assert!(!ok, "an import that doubles the orders must be refused");
    // Refused before anything was written or removed: the first run's rejected rows are there.
    assert_eq!(std::fs::read_to_string(&rejected).unwrap(), first_rejects);
    assert!(
        stderr.contains("were imported into this data directory on")
            && stderr.contains("timezone: UTC then, America/Mexico_City now")
            && stderr.contains("--keep-both"),
        "{stderr}"
    );
    assert_eq!(orders(&data), vec![vec!["3", "430.0"]]);

    // The same settings again: already imported, nothing refused.
    let (ok, summary, stderr) = import("transactions", &file, &data, &rejected, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(
        (&summary["stored"], &summary["already_imported"]),
        (&Value::from(0), &Value::from(3)),
        "{summary}"
    );

    // A time format makes the same events: the rows imported would keep what the first import
    // read while the others are read anew, so that is refused too; --keep-both imports only
    // the rows the first import did not have.
    let time_format = ["--time-format", "%Y-%m-%d %H:%M"];
    let (ok, _, stderr) = import("transactions", &file, &data, &rejected, &time_format);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("These rows make the same events as then")
            && stderr.contains("time_format: (recognised forms) then, %Y-%m-%d %H:%M now"),
        "{stderr}"
    );
    let (ok, summary, stderr) = import(
        "transactions",
        &file,
        &data,
        &rejected,
        &[time_format[0], time_format[1], "--keep-both"],
    );
    assert!(ok, "{stderr}");
    assert!(stderr.contains("that the import of"), "{stderr}");
    assert_eq!(summary["already_imported"], 3, "{summary}");

    let (ok, summary, stderr) = import(
        "transactions",
        &file,
        &data,
        &rejected,
        &["--timezone", "America/Mexico_City", "--keep-both"],
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("as new events beside those imported on"),
        "{stderr}"
    );
    assert_eq!(summary["stored"], 3, "{summary}");
    assert_eq!(orders(&data), vec![vec!["6", "860.0"]]);

    // Another data directory has imported nothing.
    let other = dir.path().join("other");
    let (ok, summary, stderr) = import(
        "transactions",
        &file,
        &other,
        &rejected,
        &["--timezone", "America/Mexico_City"],
    );
    assert!(ok, "{stderr}");
    assert_eq!(summary["stored"], 3, "{summary}");
}

/// A file with nothing to import, or a mapping that cannot be used, is refused before the data
/// directory is made, and one whose every row is refused takes the directory it made away: a
/// mistyped command leaves nothing behind to be taken for a real one.
#[test]
fn a_file_with_no_rows_or_a_bad_mapping_makes_no_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    // Parents that are not there are made for it, and taken away with it.
    let outermost = dir.path().join("clientes");
    let data = outermost.join("2025/data");
    let rejected = dir.path().join("r.csv");
    let header_only = dir.path().join("ventas.csv");
    std::fs::write(&header_only, "cliente,fecha,monto\n").unwrap();
    let empty = dir.path().join("vacio.csv");
    std::fs::write(&empty, "").unwrap();
    let blank_lines = dir.path().join("eventos.jsonl");
    std::fs::write(&blank_lines, "\n\n").unwrap();
    let undated = dir.path().join("sin_fechas.csv");
    std::fs::write(&undated, "cliente,fecha,monto\nC1,ayer,10\nC2,hoy,20\n").unwrap();
    let contacts = dir.path().join("contactos.csv");
    std::fs::write(&contacts, "nombre,ciudad\nAna,León\n").unwrap();
    for (kind, file, extra, expected) in [
        (
            "transactions",
            &header_only,
            &[][..],
            "holds no rows: it has a header line and nothing under it",
        ),
        ("events", &empty, &[][..], "the file is empty"),
        // Every row refused: the directory made for them is taken away again.
        ("transactions", &undated, &[][..], "no row of"),
        (
            "events",
            &blank_lines,
            &[][..],
            "eventos.jsonl holds no rows",
        ),
        ("contacts", &contacts, &[][..], "no column of"),
        (
            "contacts",
            &contacts,
            &["--map", "email=correo"][..],
            "correo",
        ),
    ] {
        let (ok, _, stderr) = import(kind, file, &data, &rejected, extra);
        assert!(!ok, "{kind} {}: {stderr}", file.display());
        assert!(stderr.contains(expected), "{kind}: {stderr}");
        assert!(
            !outermost.exists(),
            "{kind} {} made {}",
            file.display(),
            outermost.display()
        );
    }
}

/// Flat event rows whose file gives their ids make the same events whatever the settings: an
/// import with another time zone is told the rows would keep the first reading, and
/// `--keep-both` imports only the others. Rows without ids would be stored again, and are
/// refused as transactions are. So are Segment-shaped lines read again as flat rows.
#[test]
fn flat_events_imported_again_with_other_settings_are_told_what_would_happen() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rejected = dir.path().join("r.csv");
    let with_ids = dir.path().join("clics.csv");
    std::fs::write(
        &with_ids,
        "event_id,usuario,evento,fecha\ne1,u1,Clic,2025-12-07 10:00\ne2,u2,Clic,2025-12-07 11:00\n",
    )
    .unwrap();
    let without_ids = dir.path().join("vistas.csv");
    std::fs::write(
        &without_ids,
        "usuario,evento,fecha\nu1,Vista,2025-12-07 10:00\nu2,Vista,2025-12-07 11:00\n",
    )
    .unwrap();
    for file in [&with_ids, &without_ids] {
        let (ok, summary, stderr) = import("events", file, &data, &rejected, &[]);
        assert!(ok, "{stderr}");
        assert_eq!(summary["stored"], 2, "{summary}");
    }
    let zone = ["--timezone", "America/Mexico_City"];
    let (ok, _, stderr) = import("events", &with_ids, &data, &rejected, &zone);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("make the same events as then"), "{stderr}");
    let (ok, summary, stderr) = import(
        "events",
        &with_ids,
        &data,
        &rejected,
        &[zone[0], zone[1], "--keep-both"],
    );
    assert!(ok, "{stderr}");
    assert_eq!(summary["already_imported"], 2, "{summary}");
    let (ok, _, stderr) = import("events", &without_ids, &data, &rejected, &zone);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("timezone: UTC then"), "{stderr}");

    // Segment-shaped lines without ids, then the same lines read as flat rows (other ids).
    let lines = dir.path().join("segment.jsonl");
    std::fs::write(
        &lines,
        "{\"type\":\"track\",\"userId\":\"u1\",\"event\":\"Clic\",\"timestamp\":\"2025-12-07T10:00:00Z\"}\n",
    )
    .unwrap();
    let (ok, summary, stderr) = import("events", &lines, &data, &rejected, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(summary["stored"], 1, "{summary}");
    let (ok, _, stderr) = import(
        "events",
        &lines,
        &data,
        &rejected,
        &["--map", "user_id=userId"],
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("columns: (Segment events) then"),
        "{stderr}"
    );
}

/// `only_mapped = true` in a mapping file leaves out a flat event file's other columns, as the
/// `--only-mapped` flag does.
#[test]
fn a_mapping_files_only_mapped_leaves_out_the_columns_it_does_not_name() {
    let dir = tempfile::tempdir().unwrap();
    let (data, file, mapping) = (
        dir.path().join("data"),
        dir.path().join("clics.csv"),
        dir.path().join("clics.toml"),
    );
    std::fs::write(
        &file,
        "usuario,evento,fecha,tarjeta\nu1,Clic,2025-12-07,4111111111111111\n",
    )
    .unwrap();
    std::fs::write(&mapping, "only_mapped = true\n").unwrap();
    let (ok, summary, stderr) = import(
        "events",
        &file,
        &data,
        &dir.path().join("r.csv"),
        &["--mapping", mapping.to_str().unwrap()],
    );
    assert!(ok, "{stderr}");
    assert_eq!(summary["stored"], 1, "{summary}");
    assert_eq!(
        sql(&data, "SELECT user_id, event, properties FROM events"),
        vec![vec!["u1", "Clic", ""]]
    );
}

/// A flat event file Excel saved in Spanish (semicolons) writes its numbers with a decimal comma:
/// they are stored as the numbers they are, as a transaction log's amounts are.
#[test]
fn a_semicolon_event_file_keeps_its_decimal_comma_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (data, file) = (dir.path().join("data"), dir.path().join("compras.csv"));
    std::fs::write(
        &file,
        "usuario;evento;fecha;revenue;peso\nu1;Compra;2025-12-07;1.234,50;0,75\nu2;Compra;2025-12-07;350,5;2\n",
    )
    .unwrap();
    let (ok, summary, stderr) = import("events", &file, &data, &dir.path().join("r.csv"), &[]);
    assert!(ok, "{stderr}");
    assert_eq!(summary["stored"], 2, "{summary}");
    assert_eq!(
        sql(
            &data,
            "SELECT user_id, revenue, json_get_float(properties, 'peso') FROM events ORDER BY user_id"
        ),
        vec![vec!["u1", "1234.5", "0.75"], vec!["u2", "350.5", "2.0"]]
    );
}

/// An order is stored once, whatever its next export looks like: newest first, a cancelled row
/// taken out, columns renamed, reordered or added. Two identical lines of one order are two.
/// The same rows imported as events, by another command, are refused before they double.
#[test]
fn orders_exported_again_in_another_shape_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rejected = dir.path().join("r.csv");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    // P-1 has two lines of 100 and one of 20 between them; two shops' tills both numbered an
    // order 7 (two customers).
    let first = write(
        "pedidos.csv",
        "cliente,fecha,monto,pedido\n\
         C1,2025-12-01,100,P-1\n\
         C1,2025-12-01,20,P-1\n\
         C1,2025-12-01,100,P-1\n\
         C2,2025-12-02,250,P-2\n\
         C3,2025-12-03,80,P-3\n\
         C5,2025-12-03,15,7\n\
         C6,2025-12-03,15,7\n",
    );
    let (ok, summary, stderr) = import("transactions", &first, &data, &rejected, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(summary["stored"], 7, "{summary}");
    let reexports = [
        // Newest first, with a new order on top.
        "cliente,fecha,monto,pedido\nC4,2025-12-04,40,P-4\nC3,2025-12-03,80,P-3\n\
         C2,2025-12-02,250,P-2\nC1,2025-12-01,100,P-1\nC1,2025-12-01,100,P-1\n\
         C1,2025-12-01,20,P-1\n",
        // P-2 cancelled and left out.
        "cliente,fecha,monto,pedido\nC1,2025-12-01,100,P-1\nC1,2025-12-01,20,P-1\n\
         C1,2025-12-01,100,P-1\nC3,2025-12-03,80,P-3\nC4,2025-12-04,40,P-4\n",
        // Columns capitalised, reordered, and one added.
        "Pedido,Cliente,Fecha,Monto,Canal\nP-1,C1,2025-12-01,100,web\nP-1,C1,2025-12-01,100,web\n\
         P-1,C1,2025-12-01,20,web\nP-2,C2,2025-12-02,250,tienda\nP-3,C3,2025-12-03,80,web\n\
         P-4,C4,2025-12-04,40,web\n",
        // The first export with its header renamed: the same rows, read the same way.
        "customer_id,date,amount,order_id\n\
         C1,2025-12-01,100,P-1\nC1,2025-12-01,20,P-1\nC1,2025-12-01,100,P-1\n\
         C2,2025-12-02,250,P-2\nC3,2025-12-03,80,P-3\nC5,2025-12-03,15,7\nC6,2025-12-03,15,7\n",
    ];
    for (n, text) in reexports.into_iter().enumerate() {
        let file = write(&format!("pedidos-{n}.csv"), text);
        let (ok, _, stderr) = import("transactions", &file, &data, &rejected, &[]);
        assert!(ok, "export {n}: {stderr}");
    }
    assert_eq!(
        sql(
            &data,
            "SELECT count(*), sum(revenue), count(DISTINCT json_get_str(properties, 'order_id')) \
             FROM events WHERE event = 'Order Completed'"
        ),
        vec![vec!["8", "620.0", "5"]]
    );

    let (ok, _, stderr) = import(
        "events",
        &first,
        &data,
        &rejected,
        &["--event", "Order Completed"],
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("command: transactions then, events now"),
        "{stderr}"
    );
}

/// `--currency` is read as a currency column is (`pesos` is MXN), and a name that is no code is
/// refused before anything is imported.
#[test]
fn the_currency_flag_is_a_currency_code() {
    let dir = tempfile::tempdir().unwrap();
    let (data, file) = (dir.path().join("data"), dir.path().join("ventas.csv"));
    std::fs::write(&file, "cliente,fecha,monto\nC1,2025-12-07,100\n").unwrap();
    let rejected = dir.path().join("r.csv");
    let (ok, _, stderr) = import(
        "transactions",
        &file,
        &data,
        &rejected,
        &["--currency", "peso argentino"],
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("--currency `peso argentino` is not a currency code"),
        "{stderr}"
    );
    assert!(!data.exists());
    let (ok, _, stderr) = import(
        "transactions",
        &file,
        &data,
        &rejected,
        &["--currency", "pesos"],
    );
    assert!(ok, "{stderr}");
    assert_eq!(sql(&data, "SELECT currency FROM events"), vec![vec!["MXN"]]);
}

/// A short export that grew at its end is still the same rows as far as both go: imported again
/// with another time zone, it is refused like a long one.
#[test]
fn a_short_export_grown_at_its_end_is_known_by_its_first_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rejected = dir.path().join("r.csv");
    let rows = "C1,2025-12-01 10:00,100\nC2,2025-12-02 10:00,250\nC3,2025-12-03 10:00,80\n";
    let small = dir.path().join("semana1.csv");
    std::fs::write(&small, format!("cliente,fecha,monto\n{rows}")).unwrap();
    let grown = dir.path().join("semana2.csv");
    std::fs::write(
        &grown,
        format!("cliente,fecha,monto\n{rows}C4,2025-12-08 10:00,40\nC5,2025-12-09 10:00,60\n"),
    )
    .unwrap();
    let (ok, _, stderr) = import("transactions", &small, &data, &rejected, &[]);
    assert!(ok, "{stderr}");
    let zone = ["--timezone", "America/Mexico_City"];
    let (ok, _, stderr) = import("transactions", &grown, &data, &rejected, &zone);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("timezone: UTC then"), "{stderr}");
    // With the first import's settings, only the new rows are stored.
    let (ok, summary, stderr) = import("transactions", &grown, &data, &rejected, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(
        (&summary["stored"], &summary["already_imported"]),
        (&Value::from(2), &Value::from(3)),
        "{summary}"
    );
}

/// Survey answers without a score or a comment say nothing: most likely the wrong file. The
/// import says so.
#[test]
fn survey_answers_without_a_score_or_comment_are_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let (data, file) = (dir.path().join("data"), dir.path().join("ventas.csv"));
    std::fs::write(&file, "cliente,fecha,monto\nC1,2025-12-07,100\n").unwrap();
    let (ok, _, stderr) = import("surveys", &file, &data, &dir.path().join("r.csv"), &[]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("holds a score or a comment, so the answers say nothing"),
        "{stderr}"
    );
    let answers = dir.path().join("nps.csv");
    std::fs::write(&answers, "cliente,fecha,calificacion\nC1,2025-12-07,9\n").unwrap();
    let (ok, _, stderr) = import("surveys", &answers, &data, &dir.path().join("r.csv"), &[]);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// For orders, a column that only adds a property, renamed or left out, changes no order: the
/// export is the same orders, and is not refused. An import whose every row was refused (a time
/// format that fits no date) leaves no record behind, so the corrected one is not held against
/// it.
#[test]
fn what_changes_no_event_is_not_held_against_an_import() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rejected = dir.path().join("r.csv");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let rows = "C1,2025-12-01,100,P-1,pagado\nC2,2025-12-02,250,P-2,enviado\n";
    let first = write(
        "a.csv",
        &format!("cliente,fecha,monto,pedido,status\n{rows}"),
    );
    let renamed = write(
        "b.csv",
        &format!("cliente,fecha,monto,pedido,estado\n{rows}"),
    );
    let (ok, summary, stderr) = import("transactions", &first, &data, &rejected, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(summary["stored"], 2, "{summary}");
    for (file, extra) in [(&renamed, &[][..]), (&first, &["--ignore", "status"][..])] {
        let (ok, summary, stderr) = import("transactions", file, &data, &rejected, extra);
        assert!(ok, "{}: {stderr}", file.display());
        assert_eq!(summary["already_imported"], 2, "{summary}");
    }

    // Days after the 12th fit no month: every row refused, then the format corrected.
    let days = write(
        "dias.csv",
        "cliente,fecha,monto\nC1,25/11/2025,10\nC2,26/11/2025,20\n",
    );
    let (ok, summary, stderr) = import(
        "transactions",
        &days,
        &data,
        &rejected,
        &["--time-format", "%m/%d/%Y"],
    );
    assert!(!ok, "{stderr}");
    assert_eq!(summary["stored"], 0, "{summary}");
    let (ok, summary, stderr) = import(
        "transactions",
        &days,
        &data,
        &rejected,
        &["--time-format", "%d/%m/%Y"],
    );
    assert!(ok, "{stderr}");
    assert_eq!(summary["stored"], 2, "{summary}");
}

/// The rejected rows go to a file of their own, put in place by renaming: a `--rejected` that
/// names the file being imported (which was then lost), a symbolic link (replaced, its target
/// never written) or a directory is refused before anything is made, and the file is intact.
#[test]
fn a_rejected_path_that_would_replace_the_import_or_a_link_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("self.csv");
    let text = "customer_id,date,amount\nc1,2025-01-05,10\nc2,not a date,5\n";
    std::fs::write(&file, text).unwrap();
    let data = dir.path().join("data");
    let link = dir.path().join("link.csv");
    std::os::unix::fs::symlink(dir.path().join("target.csv"), &link).unwrap();
    for (rejected, what) in [
        (file.clone(), "is the file being imported"),
        (link.clone(), "is a symbolic link"),
        (dir.path().to_path_buf(), "is a directory"),
    ] {
        let (ok, _, stderr) = import("transactions", &file, &data, &rejected, &[]);
        assert!(!ok);
        assert!(
            stderr.contains(&format!("--rejected {} {what}", rejected.display())),
            "{stderr}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    assert!(!data.exists(), "nothing is made for a refused import");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}
