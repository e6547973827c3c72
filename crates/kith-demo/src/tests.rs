use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::customer::catalogue;
use crate::{DemoConfig, simulate, write_world};

fn world(customers: u64, seed: u64) -> Vec<crate::Simulated> {
    let config = DemoConfig::new(customers, seed);
    let products = catalogue();
    (0..customers)
        .map(|c| simulate(&config, &products, c))
        .collect()
}

#[test]
fn a_seed_gives_the_same_world_every_time_and_another_seed_another() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let config = DemoConfig::new(300, 42);
    let a = write_world(&config, dir_a.path(), |_| {}).unwrap();
    let b = write_world(&config, dir_b.path(), |_| {}).unwrap();
    assert_eq!(a, b);
    for file in [
        "events.jsonl",
        "contacts.csv",
        "transactions.csv",
        "truth/customers.csv",
    ] {
        assert_eq!(
            std::fs::read(dir_a.path().join(file)).unwrap(),
            std::fs::read(dir_b.path().join(file)).unwrap(),
            "{file}"
        );
    }
    let other = world(300, 43);
    let same = world(300, 42);
    assert_ne!(
        other.iter().map(|s| s.events.len()).collect::<Vec<_>>(),
        same.iter().map(|s| s.events.len()).collect::<Vec<_>>()
    );
}

/// A world moved in time (`kith serve --demo` ends it when it loads) keeps its people: the same
/// names, addresses and CRM contacts, whichever day it ends, so what the README says of them holds.
#[test]
fn a_world_ending_elsewhere_keeps_its_people_and_crm() {
    let products = catalogue();
    let reference = DemoConfig::new(400, 1);
    let moved = DemoConfig::new(400, 1).ending_at(reference.end + chrono::Duration::days(47));
    let mut contacts = 0;
    for customer in 0..400 {
        let (a, b) = (
            simulate(&reference, &products, customer),
            simulate(&moved, &products, customer),
        );
        let person = |s: &crate::Simulated| {
            (
                s.truth.user_id.clone(),
                s.truth.email.clone(),
                s.truth.name.clone(),
                s.truth.in_crm,
                s.truth.crm_duplicate,
            )
        };
        assert_eq!(person(&a), person(&b), "customer {customer}");
        let contact = |s: &crate::Simulated| {
            s.contact.as_ref().map(|c| {
                (
                    c.customer_number.clone(),
                    c.name.clone(),
                    c.email.clone(),
                    c.phone.clone(),
                    c.city.clone(),
                )
            })
        };
        assert_eq!(contact(&a), contact(&b), "customer {customer}");
        contacts += usize::from(a.contact.is_some());
    }
    assert!(contacts > 60, "{contacts} CRM contacts");
}

#[test]
fn every_event_is_one_kith_accepts_and_lies_inside_the_world() {
    let config = DemoConfig::new(200, 7);
    let (start, end) = (config.start(), config.end);
    let mut count = 0;
    for simulated in world(200, 7) {
        let batch = serde_json::json!({"batch": simulated.events}).to_string();
        let request = kith_core::parse::parse_batch_request(&batch).unwrap();
        let outcome = request.normalize("demo", Utc::now());
        assert!(outcome.rejections.is_empty(), "{:?}", outcome.rejections);
        for event in &outcome.events {
            assert!(
                event.timestamp >= start && event.timestamp <= end,
                "{event:?}"
            );
        }
        count += outcome.events.len();
    }
    assert!(count > 200 * 10, "only {count} events");
}

/// CRM contacts and purchase lines are dated inside the world too: a CRM date after its end
/// (it was a week after sign-up) put profiles' last activity and cohorts in the future.
#[test]
fn no_record_is_dated_after_the_world_ends() {
    let end = DemoConfig::new(1, 5).end;
    let mut late_signups = 0;
    for simulated in world(3000, 5) {
        if let Some(contact) = &simulated.contact {
            // A day, read as its midnight in Mexico City (06:00 UTC).
            let day = chrono::NaiveDate::parse_from_str(&contact.updated_at, "%d/%m/%Y").unwrap();
            let at = day.and_hms_opt(6, 0, 0).unwrap().and_utc();
            assert!(at <= end, "{contact:?}");
            let signed_up = chrono::DateTime::parse_from_rfc3339(&simulated.truth.signed_up_at);
            late_signups +=
                usize::from(signed_up.is_ok_and(|s| s > end - chrono::Duration::days(7)));
        }
        for purchase in &simulated.transactions {
            let day = chrono::NaiveDate::parse_from_str(&purchase.date, "%Y%m%d").unwrap();
            assert!(day <= end.date_naive(), "{purchase:?}");
        }
    }
    // The case that went wrong is there to be checked.
    assert!(late_signups > 0);
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    sum / n as f64
}

#[test]
fn the_latent_processes_have_the_stated_parameters_and_the_checkout_its_friction() {
    let simulated = world(6000, 11);
    let p = crate::Parameters::default();
    let signed: Vec<_> = simulated
        .iter()
        .filter(|s| !s.truth.user_id.is_empty())
        .collect();
    let signup_share = signed.len() as f64 / simulated.len() as f64;
    assert!((signup_share - 0.75).abs() < 0.03, "{signup_share}");
    // λ ~ Gamma(r, α): mean r/α; p ~ Beta(a, b): mean a/(a+b); ν ~ Gamma(q, γ): mean q/γ.
    let lambda = mean(signed.iter().map(|s| s.truth.lambda_per_week));
    assert!((lambda / (p.r / p.alpha) - 1.0).abs() < 0.08, "{lambda}");
    let dropout = mean(signed.iter().map(|s| s.truth.dropout_p));
    assert!(
        (dropout / (p.a / (p.a + p.b)) - 1.0).abs() < 0.05,
        "{dropout}"
    );
    let nu = mean(signed.iter().map(|s| s.truth.nu));
    assert!(
        (nu / (p.spend_q / p.spend_gamma) - 1.0).abs() < 0.05,
        "{nu}"
    );
    // Order values: E[p/ν] = p·γ/(q−1) spend units.
    let orders: Vec<f64> = signed
        .iter()
        .flat_map(|s| s.transactions.iter().map(|t| t.amount))
        .collect();
    let expected = p.spend_p * p.spend_gamma / (p.spend_q - 1.0) * p.spend_unit_mxn;
    let average = mean(orders.iter().copied());
    assert!(
        (average / expected - 1.0).abs() < 0.08,
        "{average} vs {expected}"
    );
    // Order Completed events and the transaction log agree.
    let completed: usize = signed
        .iter()
        .map(|s| {
            s.events
                .iter()
                .filter(|e| e["event"] == "Order Completed")
                .count()
        })
        .sum();
    assert_eq!(completed, orders.len());

    // Friction: Mercado Pago on phones fails several times as often as anything on desktop.
    let (mut tries, mut fails) = ([0u32; 2], [0u32; 2]);
    for s in &simulated {
        for e in &s.events {
            let props = &e["properties"];
            if props["payment_method"] != "mercado_pago" {
                continue;
            }
            let phone = usize::from(props["device"] != "desktop");
            match e["event"].as_str() {
                Some("Payment Info Entered") => tries[phone] += 1,
                Some("Payment Failed") => fails[phone] += 1,
                _ => {}
            }
        }
    }
    let rate = |k: usize| f64::from(fails[k]) / f64::from(tries[k]);
    assert!(
        rate(1) > 0.25 && rate(0) < 0.1,
        "mobile {} desktop {}",
        rate(1),
        rate(0)
    );

    // Churn is signalled: those who left are far more often detractors and ticket writers.
    let share = |pred: &dyn Fn(&crate::CustomerTruth) -> bool, alive: bool| {
        let group: Vec<_> = signed
            .iter()
            .filter(|s| s.truth.purchases > 0 && s.truth.alive_at_end == alive)
            .collect();
        group.iter().filter(|s| pred(&s.truth)).count() as f64 / group.len() as f64
    };
    let detractor = |t: &crate::CustomerTruth| t.nps.is_some_and(|n| n <= 6);
    assert!(share(&detractor, false) > 3.0 * share(&detractor, true));
    assert!(share(&|t| t.bad_ticket, false) > 0.5 && share(&|t| t.bad_ticket, true) == 0.0);
}

#[test]
fn the_summary_counts_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let summary = write_world(&DemoConfig::new(100, 5), dir.path(), |_| {}).unwrap();
    let lines = std::fs::read_to_string(dir.path().join("events.jsonl"))
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(summary.events, lines);
    let transactions = std::fs::read_to_string(dir.path().join("transactions.csv"))
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(summary.transactions + 1, transactions);
    let parameters: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("truth/parameters.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(parameters["parameters"]["r"], 0.9);
    assert_eq!(parameters["summary"]["customers"], 100);
    let _: DateTime<Utc> = parameters["end"].as_str().unwrap().parse().unwrap();
}
