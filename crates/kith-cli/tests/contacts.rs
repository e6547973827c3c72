//! Importing people from a CRM, and merges a person confirms: `kith import contacts` into a data
//! directory and into a running server, `kith profile merge`, `POST /v1/profiles/merge`. The real
//! binary, real files.

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

/// A CRM export as people make them: Spanish headers, legacy Mexican phone prefixes, a
/// placeholder, an unparseable date, a short row.
const CRM_CSV: &str = "\
ID,Nombre,Correo,Celular,Plan,Actualizado
,Ana López,Ana@Example.com,55 1234 5678,gold,2025-01-02 10:00
u-2,Bruno Díaz,bruno@example.com,,silver,2025-01-03 11:00
,Ana L.,ana.lopez@work.mx,044 55 1234 5678,,2025-01-04 09:00
,Nadie,n/a,123,,2025-01-05
,Carla,carla@example.com,,bronze,ayer
,Corta,row
u-3,Dora Ruiz,dora.ruiz@example.com,+52 1 33 1234 5678,gold,2025-01-06 08:30
,Dora  RUIZ,doraruiz@hotmail.com,,,2025-01-07 08:00
";

fn import(data_dir: &Path, file: &Path, rejected: &Path, extra: &[&str]) -> (bool, Value, String) {
    let mut args = vec![
        "import",
        "contacts",
        file.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--rejected",
        rejected.to_str().unwrap(),
        "--json",
    ];
    args.extend(extra);
    let (ok, stdout, stderr) = kith(&args);
    let summary = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (ok, summary, stderr)
}

fn show(data_dir: &Path, lookup: &str) -> Value {
    let (ok, stdout, stderr) = kith(&[
        "profile",
        "show",
        lookup,
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{lookup}: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn identifiers(profile: &Value) -> Vec<String> {
    profile["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("{}:{}", i["type"], i["value"]).replace('"', ""))
        .collect()
}

#[test]
fn a_crm_export_creates_and_updates_profiles_reports_every_bad_row_and_imports_once() {
    let dir = tempfile::tempdir().unwrap();
    let (data, csv, rejected) = (
        dir.path().join("data"),
        dir.path().join("crm.csv"),
        dir.path().join("rejected.csv"),
    );
    std::fs::write(&csv, CRM_CSV).unwrap();
    let zone = ["--map", "user_id=ID", "--timezone", "America/Mexico_City"];

    let (ok, summary, stderr) = import(&data, &csv, &rejected, &zone);
    assert!(ok, "{stderr}");
    // Ana's second row shares her phone (written with the old 044 prefix): it updates her profile.
    assert_eq!(
        summary,
        json!({
            "file": csv.to_str().unwrap(), "rows": 8, "stored": 5, "resumed_after": 0,
            "created": 4, "updated": 1, "merged": 0, "conflicts": 0, "unchanged": 0,
            "already_imported": 0, "rejected_rows": 3, "dropped_values": 2,
            "rejected_file": rejected.to_str().unwrap(), "duplicate_candidates": 1
        }),
        "{stderr}"
    );
    assert!(stderr.contains("Actualizado → timestamp"), "{stderr}");
    let rejects = std::fs::read_to_string(&rejected).unwrap();
    assert_eq!(
        rejects,
        "row,column,value,reason,action\n\
         4,Correo,n/a,\"not used as email: `n/a` is a placeholder, not an identity\",value dropped\n\
         4,Celular,123,not used as phone: `123` is not a valid phone number,value dropped\n\
         4,,,none of the row's identifiers is usable (see the values dropped above),row skipped\n\
         5,Actualizado,ayer,`ayer` is not a time Kith recognises; give its format with --time-format (e.g. `%d/%m/%Y %H:%M`),row skipped\n\
         6,,,the row has 3 fields but the header names 6 columns,row skipped\n"
    );

    let ana = show(&data, "phone:5512345678");
    assert_eq!(
        identifiers(&ana),
        vec![
            "email:ana.lopez@work.mx",
            "email:ana@example.com",
            "phone:+525512345678"
        ]
    );
    // Last write wins by the file's own times (Mexico City, UTC-6), not by the import's.
    assert_eq!(ana["traits"]["nombre"], "Ana L.");
    assert_eq!(ana["traits"]["plan"], "gold");
    let dora = show(&data, "user_id:u-3");
    assert_eq!(dora["traits"]["phone"], "+523312345678");
    assert_eq!(
        dora["trait_history"][0]["at"],
        "2025-01-06T14:30:00.000000Z"
    );

    // Running it again stores nothing and changes nothing.
    let (ok, again, stderr) = import(&data, &csv, &rejected, &zone);
    assert!(ok, "{stderr}");
    assert_eq!(again["already_imported"], 5);
    for field in ["created", "updated", "merged", "unchanged"] {
        assert_eq!(again[field], 0, "{field}: {again}");
    }
    assert_eq!(show(&data, "phone:5512345678"), ana);
    let (ok, count, stderr) = kith(&[
        "sql",
        "--data-dir",
        data.to_str().unwrap(),
        "--format",
        "csv",
        "SELECT count(*) AS n, min(source) AS source FROM events",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(count, "n,source\n5,crm\n");

    // Dora twice, under two mailboxes: a candidate for a person to confirm, never merged silently.
    let data_arg = data.to_str().unwrap();
    let (ok, stdout, stderr) = kith(&["profile", "duplicates", "--data-dir", data_arg, "--json"]);
    assert!(ok, "{stderr}");
    let found: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(found["total"], 1, "{found}");
    let candidate = &found["candidates"][0];
    assert_eq!(candidate["score"], 0.7);
    let mailbox = candidate["evidence"][0].as_str().unwrap();
    assert!(
        mailbox.starts_with("the same mailbox name at two domains: ")
            && mailbox.contains("dora.ruiz@example.com")
            && mailbox.contains("doraruiz@hotmail.com"),
        "{candidate}"
    );
    let (first, second) = (
        format!(
            "profile_id:{}",
            candidate["first"]["profile_id"].as_str().unwrap()
        ),
        format!(
            "profile_id:{}",
            candidate["second"]["profile_id"].as_str().unwrap()
        ),
    );
    let (ok, _, stderr) = kith(&["profile", "merge", &first, &second, "--data-dir", data_arg]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("merged into"), "{stderr}");
    let dora = show(&data, "email:doraruiz@hotmail.com");
    assert_eq!(dora["profile_id"], show(&data, "user_id:u-3")["profile_id"]);
    let (ok, stdout, _) = kith(&["profile", "duplicates", "--data-dir", data_arg]);
    assert!(ok);
    assert_eq!(stdout, "no likely duplicates scoring 0.5 or more\n");

    // Nothing importable: a non-zero exit that says where the reasons are.
    let hopeless = dir.path().join("hopeless.csv");
    std::fs::write(&hopeless, "email,name\nnull,X\n").unwrap();
    let (ok, _, stderr) = import(&data, &hopeless, &rejected, &[]);
    assert!(!ok);
    assert!(stderr.contains("no row of"), "{stderr}");
    // A mapping naming a column the file lacks is refused before anything is read.
    let (ok, _, stderr) = import(&data, &csv, &rejected, &["--map", "email=Mail"]);
    assert!(!ok);
    assert!(
        stderr.contains("the column `Mail` (mapped to email) is not in the file; its columns are: ID, Nombre, Correo, Celular, Plan, Actualizado"),
        "{stderr}"
    );
}

#[test]
fn imports_and_merges_go_through_a_running_server_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (server, config) = KithServer::start_with_config(dir.path(), "");
    let data = server.data_dir.clone();
    let admin = create_key(&data, "admin", None);
    let jsonl = dir.path().join("contacts.jsonl");
    std::fs::write(
        &jsonl,
        "{\"userId\": \"u-1\", \"email\": \"ana@example.com\", \"name\": \"Ana\"}\n\
         {\"userId\": \"u-2\", \"email\": \"ana.work@example.com\", \"name\": \"Ana López\"}\n\
         {\"email\": \"ana.personal@example.com\", \"telefono\": \"33 1111 2222\"}\n\
         {\"email\": \"ana@example.com\", \"telefono\": \"3311112222\"}\n\
         [1, 2]\n",
    )
    .unwrap();
    let rejected = dir.path().join("rejected.csv");
    let (ok, summary, stderr) = import(&data, &jsonl, &rejected, &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("into the running server"), "{stderr}");
    // The fourth row joins the profile of u-1 and the phone-only profile of the third: a merge.
    assert_eq!(
        (
            &summary["created"],
            &summary["merged"],
            &summary["rejected_rows"]
        ),
        (&json!(3), &json!(1), &json!(1)),
        "{summary}"
    );
    let (status, ana) = server.get("/v1/profiles/email:ana.personal@example.com");
    assert_eq!(status, 200, "{ana}");
    assert_eq!(ana["traits"]["name"], "Ana");
    // Her timeline holds every record counted on her profile: the row with her user id, and
    // the two that carry only an email of hers.
    let (status, timeline) = server.get("/v1/profiles/email:ana.personal@example.com/events");
    assert_eq!(status, 200, "{timeline}");
    let events = timeline["events"].as_array().unwrap();
    let emails_only = events
        .iter()
        .filter(|e| e["user_id"].is_null() && e["anonymous_id"].is_null())
        .count();
    assert_eq!((events.len(), emails_only), (3, 2), "{timeline}");
    assert_eq!(
        json!(events.len()),
        ana["computed_traits"]["event_count"],
        "{ana}"
    );

    // Two accounts of one person: the guards refuse to join two user ids, even when asked.
    let data_arg = data.to_str().unwrap();
    let (ok, _, stderr) = kith(&[
        "profile",
        "merge",
        "user_id:u-1",
        "user_id:u-2",
        "--data-dir",
        data_arg,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("the merged profile would hold 2 user_id identifiers; the limit is 1"),
        "{stderr}"
    );
    // A refused merge writes nothing: neither profile records a conflict (nor is there an event;
    // see the end).
    for who in ["user_id:u-1", "user_id:u-2"] {
        let (status, profile) = server.get(&format!("/v1/profiles/{who}"));
        assert_eq!((status, &profile["conflicts"]), (200, &json!([])), "{who}");
    }
    // An event that joins them meets the same guard, and its refusal makes them a candidate for
    // review.
    let (status, body) = post_json(
        &server.url("/v1/identify"),
        &[("Authorization", &basic(&server.write_key))],
        r#"{"userId": "u-2", "traits": {"email": "ana@example.com"}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, found) = server.get("/v1/profiles/duplicates?min_score=0.3");
        assert_eq!(status, 200, "{found}");
        let evidence = found["candidates"][0]["evidence"][0].as_str();
        if evidence.is_some_and(|e| e.starts_with("an event joined them but the merge was refused"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{found}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (status, body) = server.get("/v1/profiles/duplicates?min_score=2");
    assert_eq!(
        (status, &body["message"]),
        (400, &json!("`min_score` must be between 0 and 1, got 2"))
    );
    for (query, message) in [
        (
            "min_score=high",
            "the query parameter `min_score` is not valid: it must be a number",
        ),
        (
            "limit=abc",
            "the query parameter `limit` is not valid: it must be a whole number",
        ),
    ] {
        let (status, body) = server.get(&format!("/v1/profiles/duplicates?{query}"));
        assert_eq!(
            (status, &body["code"], &body["message"]),
            (400, &json!("invalid_parameter"), &json!(message)),
            "{query}"
        );
    }
    let merge = |body: &str, key: &str| {
        post_json(
            &server.url("/v1/profiles/merge"),
            &[("Authorization", &format!("Bearer {key}"))],
            body,
        )
    };
    let (status, refused) = merge(r#"{"profiles": ["user_id:u-1", "user_id:u-2"]}"#, &admin);
    assert_eq!(
        (status, refused),
        (
            409,
            json!({"code": "merge_refused", "type": "invalid_request", "link": "/docs/errors#merge_refused",
                   "message": "the profiles were not merged: the merged profile would hold 2 user_id identifiers; the limit is 1"})
        )
    );
    let (status, body) = merge(r#"{"profiles": ["user_id:u-1"]}"#, &admin);
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("invalid_body")),
        "{body}"
    );
    // A lookup no identifier could be is named, cut, once.
    let (status, body) = merge(
        &json!({"profiles": ["user_id:u-1", format!("email:{}", "n".repeat(5000))]}).to_string(),
        &admin,
    );
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("the identifier value in `email:nnn")
            && message.contains("… (5006 bytes)` is 5000 bytes long")
            && message.len() < 300,
        "{message}"
    );
    let (status, body) = merge(
        r#"{"profiles": ["user_id:u-1", "email:nobody@example.com"]}"#,
        &admin,
    );
    assert_eq!(
        (status, &body["message"]),
        (404, &json!("no profile holds email:nobody@example.com"))
    );
    let (status, body) = merge(
        r#"{"profiles": ["user_id:u-1", "email:x@y.z"]}"#,
        &server.read_key,
    );
    assert_eq!((status, &body["code"]), (403, &json!("insufficient_scope")));

    // A duplicate without a user id can be merged by hand, through the CLI while the server runs.
    let imported = dir.path().join("second.csv");
    std::fs::write(&imported, "correo,nombre\nanita@example.com,Anita\n").unwrap();
    let (ok, _, stderr) = import(&data, &imported, &rejected, &[]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = kith(&[
        "profile",
        "merge",
        "email:anita@example.com",
        "user_id:u-1",
        "--data-dir",
        data_arg,
    ]);
    assert!(ok, "{stderr}");
    let merged: Value = serde_json::from_str(&stdout).unwrap();
    let manual = merged["merges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["reason"] == "manual")
        .cloned()
        .unwrap_or_else(|| panic!("no manual merge in {merged}"));
    assert!(
        manual["absorbed"]
            .to_string()
            .contains("email:anita@example.com")
            || manual["via"] == "email:anita@example.com",
        "{manual}"
    );
    // Asking again is harmless.
    let (status, again) = merge(
        r#"{"profiles": ["email:anita@example.com", "user_id:u-1"]}"#,
        &admin,
    );
    assert_eq!((status, &again["merged"]), (200, &json!(false)), "{again}");
    assert_eq!(
        again["reason"],
        "`email:anita@example.com` and `user_id:u-1` already name one profile; nothing was changed"
    );

    // After a restart the merge still holds. The merge made is an event like any other; the two
    // refused wrote none, so counting `Profiles Merged` counts merges.
    let server = server.restart_with_config(&config);
    let (status, after) = server.get("/v1/profiles/email:anita@example.com");
    assert_eq!(status, 200);
    assert_eq!(after["profile_id"], merged["profile_id"]);
    assert_eq!(after["merges"], merged["merges"]);
    let rows =
        server.rows("SELECT event, source FROM events WHERE type = 'track' ORDER BY received_at");
    assert_eq!(
        rows.iter()
            .map(|r| (r["event"].clone(), r["source"].clone()))
            .collect::<Vec<_>>(),
        vec![(json!("Profiles Merged"), json!("kith"))]
    );
    // Nobody can send such a record: the source is reserved.
    let (ok, _, stderr) = kith(&[
        "key",
        "create",
        "--data-dir",
        data_arg,
        "--scope",
        "ingest",
        "--source",
        "kith",
    ]);
    assert!(!ok);
    assert!(stderr.contains("reserved"), "{stderr}");
}
