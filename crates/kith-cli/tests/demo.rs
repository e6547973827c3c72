//! The demo world end to end: `kith demo generate --into`, loaded through the real ingestion path,
//! checked against the truth written beside it; `kith import events` on its files.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use serde_json::Value;

fn truth(data: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(data.join("demo/truth/customers.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(str::to_string))
                .collect()
        })
        .collect()
}

#[test]
fn the_demo_world_loads_through_ingestion_and_kith_recovers_what_generated_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let (ok, stdout, stderr) = kith(&[
        "demo",
        "generate",
        "--customers",
        "800",
        "--seed",
        "3",
        "--into",
        data_arg,
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("demo world: 800 customers"), "{stdout}");
    // Customers' data: the new data directory is its owner's alone.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{mode:o}");
    }
    let parameters: Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("demo/truth/parameters.json")).unwrap(),
    )
    .unwrap();
    let events = parameters["summary"]["events"].as_u64().unwrap();
    // Another world is not mixed into this one.
    let (ok, _, stderr) = kith(&[
        "demo",
        "generate",
        "--customers",
        "800",
        "--seed",
        "4",
        "--into",
        data_arg,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains(
            "holds the demo world of 800 customers and seed 3 ending 2026-10-31T23:59:59+00:00 \
             already"
        ),
        "{stderr}"
    );
    // Nor is the same world ending at another time: its events would be taken for the first's
    // (their message ids are the same) while its truth replaced the first's.
    let (ok, _, stderr) = kith(&[
        "demo",
        "generate",
        "--customers",
        "800",
        "--seed",
        "3",
        "--end",
        "2026-06-30",
        "--into",
        data_arg,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--seed 3 --end 2026-10-31T23:59:59+00:00), which changes nothing"),
        "{stderr}"
    );
    // The events, and one identify per CRM contact imported after them.
    let contacts = parameters["summary"]["contacts"].as_u64().unwrap();
    assert_eq!(
        sql(
            &data,
            "SELECT source, count(*) FROM events GROUP BY source ORDER BY source"
        ),
        vec![
            vec!["crm".to_string(), contacts.to_string()],
            vec!["demo".to_string(), events.to_string()]
        ]
    );

    // Every customer who signed up is one profile whose revenue is what they were generated to
    // spend; CRM contacts with a shared email or phone joined them (customer number and all).
    let revenue: HashMap<String, f64> = sql(
        &data,
        "SELECT i.id_value, p.total_revenue FROM profiles p \
         JOIN profile_identities i ON i.profile_id = p.profile_id AND i.id_type = 'user_id'",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap()))
    .collect();
    let numbers: HashMap<String, String> = sql(
        &data,
        "SELECT u.id_value, c.id_value FROM profile_identities u \
         JOIN profile_identities c ON c.profile_id = u.profile_id AND c.id_type = 'customer_number' \
         WHERE u.id_type = 'user_id'",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone()))
    .collect();
    let customers = truth(&data);
    let signed: Vec<_> = customers
        .iter()
        .filter(|c| !c["user_id"].is_empty())
        .collect();
    assert!(signed.len() > 500, "{}", signed.len());
    for customer in &signed {
        let user = &customer["user_id"];
        let expected: f64 = customer["revenue_mxn"].parse().unwrap();
        let got = revenue.get(user).copied().unwrap_or(f64::NAN);
        assert!((got - expected).abs() < 0.01, "{user}: {got} vs {expected}");
        let joined = customer["in_crm"] == "true" && customer["crm_duplicate"] == "false";
        assert_eq!(numbers.contains_key(user), joined, "{user}: {customer:?}");
    }

    // The CRM's other mailboxes are left apart, and found as likely duplicates: at the usual bar
    // nearly all that is listed is one person (a CRM contact and the only account of that name
    // in that city); below it, those a namesake in the same city makes uncertain.
    let duplicates: Vec<&String> = signed
        .iter()
        .filter(|c| c["crm_duplicate"] == "true")
        .map(|c| &c["user_id"])
        .collect();
    assert!(duplicates.len() >= 10, "{}", duplicates.len());
    let found_at = |bar: &str| -> (f64, f64, Value) {
        let (ok, stdout, stderr) = kith(&[
            "profile",
            "duplicates",
            "--data-dir",
            data_arg,
            "--json",
            "--min-score",
            bar,
            "--limit",
            "100000",
        ]);
        assert!(ok, "{stderr}");
        let found: Value = serde_json::from_str(&stdout).unwrap();
        let mut true_pairs = 0;
        let mut recalled = std::collections::HashSet::new();
        for candidate in found["candidates"].as_array().unwrap() {
            let users = |side: &str| -> Vec<String> {
                candidate[side]["identifiers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|i| i.as_str()?.strip_prefix("user_id:").map(str::to_string))
                    .collect()
            };
            let (a, b) = (users("first"), users("second"));
            let user = match (a.as_slice(), b.as_slice()) {
                ([user], []) | ([], [user]) => user.clone(),
                _ => continue,
            };
            if duplicates.contains(&&user) {
                true_pairs += 1;
                recalled.insert(user);
            }
        }
        let recall = recalled.len() as f64 / duplicates.len() as f64;
        let precision = true_pairs as f64 / found["total"].as_f64().unwrap().max(1.0);
        (recall, precision, found)
    };
    let (recall, precision, found) = found_at("0.5");
    assert!(precision >= 0.8, "precision {precision}: {found}");
    assert!(recall >= 0.5, "recall {recall}: {found}");
    let (recall, _, found) = found_at("0.4");
    assert!(recall >= 0.8, "recall {recall} at 0.4: {}", found["total"]);
    // The text lists each pair with the command that merges it, but for two accounts (two user
    // ids), which the guards keep apart: that command would only be refused.
    let (_, _, found) = found_at("0.3");
    let mergeable = found["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            let has_user = |side: &str| {
                c[side]["identifiers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|i| i.as_str().unwrap().starts_with("user_id:"))
            };
            !(has_user("first") && has_user("second"))
        })
        .count();
    let total = found["total"].as_u64().unwrap() as usize;
    assert!(mergeable > 0 && mergeable < total, "{mergeable} of {total}");
    let (ok, text, stderr) = kith(&[
        "profile",
        "duplicates",
        "--data-dir",
        data_arg,
        "--min-score",
        "0.3",
        "--limit",
        "100000",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        text.matches("confirm: kith profile merge").count(),
        mergeable
    );

    // Importing the same events again stores nothing twice.
    let rejected = dir.path().join("rejected.csv");
    let (ok, stdout, stderr) = kith(&[
        "import",
        "events",
        data.join("demo/events.jsonl").to_str().unwrap(),
        "--data-dir",
        data_arg,
        "--source",
        "demo",
        "--json",
        "--rejected",
        rejected.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let again: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (again["stored"].as_u64(), again["already_imported"].as_u64()),
        (Some(0), Some(events))
    );
    assert_eq!(
        sql(&data, "SELECT count(*) FROM events"),
        vec![vec![(events + contacts).to_string()]]
    );
}

#[test]
fn an_events_file_is_imported_once_and_its_bad_lines_are_kept_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("export.jsonl");
    std::fs::write(
        &file,
        concat!(
            "{\"type\": \"track\", \"event\": \"Order Completed\", \"userId\": \"u-1\", \"timestamp\": \"2025-01-02T10:00:00Z\", \"properties\": {\"revenue\": 10}}\n",
            "{\"type\": \"track\", \"userId\": \"u-1\", \"timestamp\": \"2025-01-02T11:00:00Z\"}\n",
            "not json\n",
            "\n",
            "{\"type\": \"page\", \"anonymousId\": \"a-1\", \"name\": \"Inicio\", \"timestamp\": \"2025-01-02T09:00:00Z\"}\n",
        ),
    )
    .unwrap();
    let rejected = dir.path().join("rejected.csv");
    let import = || {
        let (ok, stdout, stderr) = kith(&[
            "import",
            "events",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--json",
            "--rejected",
            rejected.to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    let first = import();
    assert_eq!(
        (&first["rows"], &first["stored"], &first["rejected_rows"]),
        (&Value::from(4), &Value::from(2), &Value::from(2)),
        "{first}"
    );
    let reasons = std::fs::read_to_string(&rejected).unwrap();
    assert!(
        reasons.contains("3,,,not valid JSON: expected ident at line 1 column 2,row skipped"),
        "{reasons}"
    );
    assert!(reasons.contains("2,event,,"), "{reasons}");
    // No messageId in the file: ids come from the lines, so a second run stores nothing.
    let second = import();
    assert_eq!(
        (&second["stored"], &second["already_imported"]),
        (&Value::from(0), &Value::from(2))
    );
    assert_eq!(
        sql(&data, "SELECT type, source FROM events ORDER BY timestamp"),
        vec![
            vec!["page".to_string(), "import".to_string()],
            vec!["track".to_string(), "import".to_string()]
        ]
    );
}

#[test]
fn clv_models_recover_the_parameters_that_generated_the_demo_world() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("world");
    let (ok, _, stderr) = kith(&[
        "demo",
        "generate",
        "--customers",
        "5000",
        "--seed",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = kith(&[
        "models",
        "clv",
        "fit",
        "--transactions",
        out.join("transactions.csv").to_str().unwrap(),
        "--calibration-end",
        "2026-10-31",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let truth: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("truth/parameters.json")).unwrap())
            .unwrap();
    let t = &truth["parameters"];
    let within = |fitted: &Value, name: &str, true_value: f64| {
        let value = fitted["params"][name].as_f64().unwrap();
        let se = fitted["standard_errors"][name].as_f64().unwrap();
        assert!(
            (value - true_value).abs() <= 2.0 * se,
            "{name}: fitted {value} ± {se}, true {true_value}"
        );
    };
    // Time in weeks (days, multiplier 7), as the generator's rates are.
    let bg = &report["models"]["bg_nbd"];
    for (name, key) in [("r", "r"), ("alpha", "alpha"), ("a", "a"), ("b", "b")] {
        within(bg, name, t[key].as_f64().unwrap());
    }
    // Spend is in pesos, the generator's unit times 40: γ scales with it.
    let gg = &report["models"]["gamma_gamma"]["model"];
    within(gg, "p", t["spend_p"].as_f64().unwrap());
    within(gg, "q", t["spend_q"].as_f64().unwrap());
    within(
        gg,
        "gamma",
        t["spend_gamma"].as_f64().unwrap() * t["spend_unit_mxn"].as_f64().unwrap(),
    );
}

/// `--end` moves the world in time: its truth says where it ends and no event is later; an end
/// in the future or one that is no time is refused, naming what to give.
#[test]
fn a_demo_world_ends_where_it_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("world");
    let out_arg = out.to_str().unwrap();
    let (ok, _, stderr) = kith(&[
        "demo",
        "generate",
        "--customers",
        "60",
        "--end",
        "2025-03-31",
        "--out",
        out_arg,
    ]);
    assert!(ok, "{stderr}");
    let parameters: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("truth/parameters.json")).unwrap())
            .unwrap();
    assert_eq!(parameters["end"], "2025-03-31T23:59:59+00:00");
    let latest = std::fs::read_to_string(out.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).unwrap();
            chrono::DateTime::parse_from_rfc3339(event["timestamp"].as_str().unwrap()).unwrap()
        })
        .max()
        .unwrap();
    let end = chrono::DateTime::parse_from_rfc3339("2025-03-31T23:59:59Z").unwrap();
    assert!(latest <= end, "an event at {latest}");
    assert!(
        latest > end - chrono::Duration::days(30),
        "the last event is at {latest}, a month or more before the end"
    );

    // Today's date ends the world now, not at a second still to come.
    let today = chrono::Utc::now().date_naive().to_string();
    let (ok, _, stderr) = kith(&[
        "demo",
        "generate",
        "--customers",
        "5",
        "--end",
        &today,
        "--out",
        dir.path().join("today").to_str().unwrap(),
    ]);
    assert!(ok, "--end {today}: {stderr}");
    for (end, told) in [
        (
            "2999-01-01",
            "is in the future; a demo world ends at the latest now",
        ),
        ("yesterday", "give a date (2026-10-31), an RFC 3339 time"),
        ("1970-12-31", "the world would start before 1970"),
    ] {
        let (ok, _, stderr) = kith(&[
            "demo",
            "generate",
            "--customers",
            "5",
            "--end",
            end,
            "--out",
            out_arg,
        ]);
        assert!(!ok, "--end {end} was taken");
        assert!(stderr.contains(told), "--end {end}: {stderr}");
    }
}

/// A world too large for any disk is refused before anything is written.
#[test]
fn a_demo_world_past_the_largest_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("world");
    let (ok, _, err) = kith(&[
        "demo",
        "generate",
        "--customers",
        "18446744073709551615",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("more than the 10000000"), "{err}");
    assert!(!out.exists());
}

/// While `kith serve --demo` loads its world (and replays its journal), the address answers:
/// `/healthz` that it is alive, everything else `503 starting` with `Retry-After`, and then
/// the server itself.
#[test]
fn the_address_answers_while_the_server_starts() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = chrono::Utc::now();
    let mut child = Command::new(kith_bin())
        .args(["serve", "--demo", "--demo-customers", "1500", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (listening_tx, listening_rx) = std::sync::mpsc::channel();
    let (loaded_tx, loaded_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("kith is listening") {
                let _ = listening_tx.send(());
            }
            if let Some(rest) = line.strip_prefix("loaded ") {
                let _ = loaded_tx.send(rest.split(' ').next().unwrap_or_default().to_string());
            }
        }
    });
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    // Before the server is up: alive, not ready.
    let mut seen_starting = false;
    while listening_rx.try_recv().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never started"
        );
        if let Ok(mut health) = agent().get(format!("{base}/healthz")).call() {
            let ready = agent().get(format!("{base}/readyz")).call().unwrap();
            if ready.status() == 503 {
                assert_eq!(health.status(), 200);
                let body: serde_json::Value =
                    serde_json::from_str(&health.body_mut().read_to_string().unwrap()).unwrap();
                assert_eq!(body["starting"], true, "{body}");
                assert_eq!(ready.headers()["retry-after"], "1");
                seen_starting = true;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        seen_starting,
        "the address did not answer while the demo world loaded"
    );
    // Then the server itself.
    let ready = agent().get(format!("{base}/readyz")).call().unwrap();
    assert_eq!(ready.status(), 200);
    // Its world ends when it was loaded, so analyses measured from now see a shop open today.
    let parameters: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("data/demo/truth/parameters.json")).unwrap(),
    )
    .unwrap();
    let end = chrono::DateTime::parse_from_rfc3339(parameters["end"].as_str().unwrap()).unwrap();
    assert!(
        started - chrono::Duration::seconds(1) <= end && end <= chrono::Utc::now(),
        "the world ends {end}, the server started at {started}"
    );
    let _ = child.kill();
    let _ = child.wait();
    // The count it said it loaded is what the events table holds, CRM contacts included.
    let loaded = loaded_rx
        .try_recv()
        .expect("the server said what it loaded");
    let data = dir.path().join("data");
    let stored = sql(&data, "SELECT count(*) FROM events");
    assert_eq!(stored[0][0], loaded);
}

/// `--out` never replaces files it did not write (a user's own export of the same name), and the
/// files it writes import as the summary says: the CRM contacts with their day-first dates.
#[test]
fn generated_files_never_replace_a_users_and_import_as_the_summary_says() {
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    let export = "customer_id,date,amount\nREAL,2025-01-01,100\n";
    std::fs::write(mine.join("transactions.csv"), export).unwrap();
    let generate = |out: &std::path::Path| {
        kith(&[
            "demo",
            "generate",
            "--customers",
            "200",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let (ok, _, stderr) = generate(&mine);
    assert!(!ok);
    assert!(
        stderr.contains("already holds transactions.csv, which a demo world would replace"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("transactions.csv")).unwrap(),
        export
    );

    let world = dir.path().join("world");
    let (ok, summary, stderr) = generate(&world);
    assert!(ok, "{stderr}");
    // A world written before may be written again.
    assert!(generate(&world).0);
    let contacts_import = summary
        .split("; ")
        .find(|part| part.starts_with("kith import contacts"))
        .unwrap_or_else(|| panic!("{summary}"))
        .trim();
    let data = dir.path().join("data");
    let mut args: Vec<&str> = contacts_import.split_whitespace().skip(1).collect();
    args.extend(["--data-dir", data.to_str().unwrap()]);
    let (ok, _, stderr) = kith(&args);
    assert!(ok, "{contacts_import}: {stderr}");
    let contacts = std::fs::read_to_string(world.join("contacts.csv")).unwrap();
    let rows = contacts.lines().count() - 1;
    assert!(rows > 0);
    assert_eq!(
        sql(&data, "SELECT count(*) FROM events"),
        [vec![rows.to_string()]]
    );
}
