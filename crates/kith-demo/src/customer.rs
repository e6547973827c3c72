//! One customer's life, simulated: visits, sign-up, devices, purchases, emails, tickets, surveys,
//! a subscription, and the truth behind them.

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, Exp, Gamma};
use serde::Serialize;
use serde_json::{Value, json};

use crate::DemoConfig;
use crate::catalogue::{
    self, CATEGORIES, CITIES, EMAIL_DOMAINS, EMPLOYER_DOMAINS, FIRST_NAMES, LAST_NAMES, Product,
};

/// What the data does not say outright, for tests to compare Kith's answers with.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CustomerTruth {
    pub customer: u64,
    /// Empty for visitors who never signed up.
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub channel: &'static str,
    pub device: &'static str,
    pub arrived_at: String,
    pub signed_up_at: String,
    /// Purchases a week while active (BG/NBD λ).
    pub lambda_per_week: f64,
    /// Chance of leaving after each purchase (BG/NBD p).
    pub dropout_p: f64,
    /// Gamma-gamma ν: the customer's mean order value is `spend_p / nu` spend units.
    pub nu: f64,
    pub purchases: u32,
    pub revenue_mxn: f64,
    pub alive_at_end: bool,
    /// When the customer left (their last purchase), if they did.
    pub churned_at: String,
    pub favourite_category: &'static str,
    pub refuses_marketing: bool,
    pub subscribed: bool,
    pub bad_ticket: bool,
    pub nps: Option<u8>,
    /// In the CRM export (`contacts.csv`, as customer number `C` + seven digits).
    pub in_crm: bool,
    /// In the CRM under another mailbox and no phone: a duplicate only a person can confirm.
    pub crm_duplicate: bool,
    /// `browser`, `one_time`, `active`, `lost`.
    pub segment: &'static str,
}

/// A CRM row for the customer, as a sales team would have typed it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContactRow {
    #[serde(rename = "Cliente")]
    pub customer_number: String,
    #[serde(rename = "Nombre")]
    pub name: String,
    #[serde(rename = "Correo")]
    pub email: String,
    #[serde(rename = "Teléfono")]
    pub phone: String,
    #[serde(rename = "Ciudad")]
    pub city: String,
    #[serde(rename = "Actualizado")]
    pub updated_at: String,
}

/// A purchase in the transaction log (CDNOW's shape: who, when, how many, how much).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Transaction {
    pub customer_id: String,
    pub date: String,
    pub quantity: u32,
    pub amount: f64,
}

/// Everything one customer produced.
#[derive(Debug, Clone)]
pub struct Simulated {
    /// Segment-shaped events (what SDKs and server integrations would send), in time order.
    pub events: Vec<Value>,
    pub contact: Option<ContactRow>,
    pub transactions: Vec<Transaction>,
    pub truth: CustomerTruth,
}

struct Life<'a> {
    config: &'a DemoConfig,
    rng: ChaCha8Rng,
    products: &'a [Product],
    customer: u64,
    events: Vec<Value>,
    next_message: u32,
    context: Value,
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn pick<'t, T>(rng: &mut ChaCha8Rng, items: &'t [T]) -> &'t T {
    &items[rng.random_range(0..items.len())]
}

fn weeks(w: f64) -> Duration {
    days(w * 7.0)
}

/// A wait of `d` days. Waits drawn from very low rates can exceed what a date can hold; a
/// thousand years is as good as never for an 18-month world.
fn days(d: f64) -> Duration {
    const NEVER_DAYS: f64 = 365_000.0;
    Duration::seconds((d.clamp(0.0, NEVER_DAYS) * 86_400.0) as i64)
}

const CHANNELS: [(&str, f64, &str, &str); 4] = [
    ("organic", 0.40, "google", "organic"),
    ("paid", 0.30, "facebook", "cpc"),
    ("email", 0.15, "newsletter", "email"),
    ("referral", 0.15, "amigo", "referral"),
];

const PAYMENT_METHODS: [&str; 4] = ["tarjeta", "mercado_pago", "oxxo", "paypal"];

const GOOD_TICKETS: [(&str, &str); 4] = [
    (
        "¿Dónde está mi pedido?",
        "Hola, quería saber cuándo llega mi pedido. Gracias.",
    ),
    (
        "Cambio de talla",
        "Me gustaría cambiar la talla, el producto está perfecto.",
    ),
    (
        "Factura",
        "¿Me pueden enviar la factura de mi compra? Muchas gracias.",
    ),
    (
        "Question about my order",
        "Hi, could you confirm the delivery date? Thanks!",
    ),
];

const BAD_TICKETS: [(&str, &str); 4] = [
    (
        "Pedido incompleto",
        "Llegó incompleto y nadie me responde. Pésimo servicio, estoy muy molesta.",
    ),
    (
        "Cobro doble",
        "Me cobraron dos veces y después de una semana siguen sin devolverme el dinero.",
    ),
    (
        "Producto dañado",
        "El producto llegó roto. Es la segunda vez, no vuelvo a comprar aquí.",
    ),
    (
        "Terrible experience",
        "My order never arrived and support keeps ignoring me. Very disappointed.",
    ),
];

const PROMOTER_COMMENTS: [&str; 4] = [
    "Excelente servicio, todo llegó rapidísimo.",
    "Me encantan sus productos, los recomiendo.",
    "Great quality and fast delivery!",
    "Muy buena atención, volveré a comprar.",
];

const PASSIVE_COMMENTS: [&str; 3] = [
    "Bien, aunque el envío tardó un poco.",
    "Good products, prices could be better.",
    "Todo correcto.",
];

const DETRACTOR_COMMENTS: [&str; 4] = [
    "Muy mala experiencia con el envío, no lo recomiendo.",
    "El soporte nunca resolvió mi problema.",
    "Awful support, I will not buy again.",
    "Caro y de mala calidad.",
];

impl Life<'_> {
    fn message_id(&mut self) -> String {
        self.next_message += 1;
        format!(
            "demo-{}-{}-{}",
            self.config.seed, self.customer, self.next_message
        )
    }

    fn push(&mut self, at: DateTime<Utc>, mut event: Value) {
        if at > self.config.end {
            return;
        }
        let id = self.message_id();
        let object = event.as_object_mut().expect("events are objects");
        object.insert("messageId".into(), Value::String(id));
        object.insert("timestamp".into(), Value::String(iso(at)));
        object
            .entry("context")
            .or_insert_with(|| self.context.clone());
        self.events.push(event);
    }

    fn who(&self, user: Option<&str>, anonymous: Option<&str>) -> Value {
        let mut who = json!({});
        if let Some(user) = user {
            who["userId"] = Value::String(user.to_string());
        }
        if let Some(anonymous) = anonymous {
            who["anonymousId"] = Value::String(anonymous.to_string());
        }
        who
    }

    fn with(&self, who: &Value, event: Value) -> Value {
        let mut event = event;
        if let (Some(target), Some(fields)) = (event.as_object_mut(), who.as_object()) {
            for (k, v) in fields {
                target.insert(k.clone(), v.clone());
            }
        }
        event
    }

    /// A browsing visit: a few pages and product views. Returns when it ended.
    fn visit(
        &mut self,
        who: &Value,
        at: DateTime<Utc>,
        preference: &[f64],
        app: bool,
    ) -> DateTime<Utc> {
        let mut t = at;
        let pages = self.rng.random_range(2..7);
        for k in 0..pages {
            let product = self.choose_product(preference).clone();
            let page = if k == 0 {
                "Inicio".to_string()
            } else {
                product.name.clone()
            };
            let view = if app {
                json!({"type": "screen", "name": page})
            } else {
                json!({"type": "page", "name": page,
                       "properties": {"path": format!("/p/{}", product.sku), "url": format!("https://tienda.mx/p/{}", product.sku)}})
            };
            let event = self.with(who, view);
            self.push(t, event);
            if k > 0 {
                let event = self.with(who, json!({"type": "track", "event": "Product Viewed",
                    "properties": {"product_id": product.sku, "name": product.name, "category": product.category,
                                   "price": product.price, "currency": "MXN"}}));
                self.push(t + Duration::seconds(2), event);
            }
            t += Duration::seconds(self.rng.random_range(20..180));
        }
        t
    }

    fn choose_product(&mut self, preference: &[f64]) -> &Product {
        let roll: f64 = self.rng.random();
        let mut category = CATEGORIES.len() - 1;
        let mut sum = 0.0;
        for (c, weight) in preference.iter().enumerate() {
            sum += weight;
            if roll < sum {
                category = c;
                break;
            }
        }
        let per_category = self.products.len() / CATEGORIES.len();
        let index = category * per_category + self.rng.random_range(0..per_category);
        &self.products[index]
    }
}

/// Simulates customer number `customer` of the world.
pub fn simulate(config: &DemoConfig, products: &[Product], customer: u64) -> Simulated {
    let seed = config
        .seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(customer.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let params = &config.parameters;
    let start = config.start();
    let span_days = (config.end - start).num_seconds() as f64 / 86_400.0;
    let arrived = start + days(rng.random::<f64>() * span_days);

    let channel = {
        let roll: f64 = rng.random();
        let mut sum = 0.0;
        let mut chosen = CHANNELS[0];
        for c in CHANNELS {
            sum += c.1;
            if roll < sum {
                chosen = c;
                break;
            }
        }
        chosen
    };
    let mobile = rng.random_bool(0.6);
    let app = mobile && rng.random_bool(0.3);
    let device: &'static str = if app {
        "app"
    } else if mobile {
        "mobile"
    } else {
        "desktop"
    };
    let refuses_marketing = rng.random_bool(0.25);
    let first = *pick(&mut rng, &FIRST_NAMES);
    let last = *pick(&mut rng, &LAST_NAMES);
    let (city, area) = *pick(&mut rng, &CITIES);
    let name = format!("{first} {last}");
    let fold = |s: &str| {
        s.to_lowercase()
            .replace('á', "a")
            .replace('é', "e")
            .replace('í', "i")
            .replace('ó', "o")
            .replace('ú', "u")
    };
    let email = format!(
        "{}.{}{}@{}",
        fold(first),
        fold(last),
        customer,
        pick(&mut rng, &EMAIL_DOMAINS)
    );
    let local_digits = 10 - area.len();
    let phone = format!(
        "+52 {area} {:0width$}",
        rng.random_range(0..10u64.pow(local_digits as u32)),
        width = local_digits
    );
    // Category preferences: a few strong favourites.
    let gamma_half = Gamma::new(0.5, 1.0).expect("valid gamma");
    let raw: Vec<f64> = (0..CATEGORIES.len())
        .map(|_| gamma_half.sample(&mut rng) + 1e-6)
        .collect();
    let total: f64 = raw.iter().sum();
    let preference: Vec<f64> = raw.iter().map(|w| w / total).collect();
    let favourite = preference
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);

    let lambda = Gamma::new(params.r, 1.0 / params.alpha)
        .expect("valid gamma")
        .sample(&mut rng);
    let dropout_p = Beta::new(params.a, params.b)
        .expect("valid beta")
        .sample(&mut rng);
    // Clamped away from zero so the spend distribution below always exists.
    let nu = Gamma::new(params.spend_q, 1.0 / params.spend_gamma)
        .expect("valid gamma")
        .sample(&mut rng)
        .max(1e-9);
    let spend = Gamma::new(params.spend_p, 1.0 / nu).expect("valid gamma");

    let anonymous = format!("anon-{:016x}", rng.random::<u64>());
    let (utm_source, utm_medium) = (channel.2, channel.3);
    let context = json!({
        "library": {"name": if app { "analytics-react-native" } else { "analytics.js" }, "version": "4.4.7"},
        "locale": "es-MX", "timezone": "America/Mexico_City",
        "device": {"type": device},
        "campaign": {"source": utm_source, "medium": utm_medium, "name": "temporada"},
        "consent": {"categoryPreferences": {"analytics": true, "marketing": !refuses_marketing, "personalization": true}}
    });
    let mut life = Life {
        config,
        rng,
        products,
        customer,
        events: Vec::new(),
        next_message: 0,
        context,
    };

    // Anonymous visits before deciding.
    let anonymous_who = life.who(None, Some(&anonymous));
    let mut t = arrived;
    for _ in 0..life.rng.random_range(1..4) {
        t = life.visit(&anonymous_who, t, &preference, app);
        t += days(Exp::new(0.5).expect("valid exp").sample(&mut life.rng));
    }
    let signs_up = life.rng.random_bool(params.signup_rate) && t < config.end;
    let mut truth = CustomerTruth {
        customer,
        user_id: String::new(),
        email: String::new(),
        name: name.clone(),
        channel: channel.0,
        device,
        arrived_at: iso(arrived),
        signed_up_at: String::new(),
        lambda_per_week: lambda,
        dropout_p,
        nu,
        purchases: 0,
        revenue_mxn: 0.0,
        alive_at_end: true,
        churned_at: String::new(),
        favourite_category: CATEGORIES[favourite].0,
        refuses_marketing,
        subscribed: false,
        bad_ticket: false,
        nps: None,
        in_crm: false,
        crm_duplicate: false,
        segment: "browser",
    };
    if !signs_up {
        return Simulated {
            events: life.events,
            contact: None,
            transactions: Vec::new(),
            truth,
        };
    }
    let user_id = format!("u-{customer}");
    let gives_phone = life.rng.random_bool(0.7);
    let mut traits = json!({"email": email, "name": name, "first_name": first, "last_name": last,
                            "city": city, "channel": channel.0});
    if gives_phone {
        traits["phone"] = Value::String(phone.clone());
    }
    let signup = t;
    let event =
        json!({"type": "identify", "userId": user_id, "anonymousId": anonymous, "traits": traits});
    life.push(signup, event);
    let event = json!({"type": "track", "event": "Signed Up", "userId": user_id, "anonymousId": anonymous,
                       "properties": {"method": "email"}});
    life.push(signup + Duration::seconds(1), event);
    truth.user_id = user_id.clone();
    truth.email = email.clone();
    truth.signed_up_at = iso(signup);
    let user_who = life.who(Some(&user_id), Some(&anonymous));
    let server_who = life.who(Some(&user_id), None);

    // Purchases: BG/NBD. The first comes soon after sign-up; each later one after an exponential
    // wait at rate λ; after each repeat purchase, the customer leaves with probability p.
    let mut purchases: Vec<DateTime<Utc>> = Vec::new();
    let mut when = signup + days(Exp::new(1.0).expect("valid exp").sample(&mut life.rng));
    let mut churned_at = None;
    while when <= config.end {
        purchases.push(when);
        // As in BG/NBD, the first purchase starts the clock; leaving follows repeat purchases.
        if purchases.len() > 1 && life.rng.random_bool(dropout_p) {
            churned_at = Some(when);
            break;
        }
        if lambda <= 1e-9 {
            break;
        }
        when += weeks(Exp::new(lambda).expect("valid exp").sample(&mut life.rng));
    }
    let mut transactions = Vec::new();
    let mut revenue = 0.0;
    for (n, at) in purchases.iter().enumerate() {
        let items = life.rng.random_range(1..4u32);
        let chosen: Vec<Product> = (0..items)
            .map(|_| life.choose_product(&preference).clone())
            .collect();
        let value = (spend.sample(&mut life.rng) * params.spend_unit_mxn * 100.0).round() / 100.0;
        let list_total: f64 = chosen.iter().map(|p| p.price).sum();
        let mut lines = Vec::new();
        let mut allotted = 0.0;
        for (k, product) in chosen.iter().enumerate() {
            let price = if k + 1 == chosen.len() {
                ((value - allotted) * 100.0).round() / 100.0
            } else {
                ((value * product.price / list_total) * 100.0).round() / 100.0
            };
            allotted += price;
            lines.push(json!({"product_id": product.sku, "name": product.name, "category": product.category,
                              "price": price, "quantity": 1}));
        }
        let mut t = *at - Duration::minutes(12);
        for product in &chosen {
            let event = life.with(&user_who, json!({"type": "track", "event": "Product Viewed",
                "properties": {"product_id": product.sku, "category": product.category, "price": product.price, "currency": "MXN"}}));
            life.push(t, event);
            t += Duration::seconds(40);
            let event = life.with(&user_who, json!({"type": "track", "event": "Product Added",
                "properties": {"product_id": product.sku, "category": product.category, "price": product.price, "quantity": 1}}));
            life.push(t, event);
            t += Duration::seconds(20);
        }
        let event = life.with(
            &user_who,
            json!({"type": "track", "event": "Checkout Started",
            "properties": {"value": value, "currency": "MXN", "products": lines}}),
        );
        life.push(t, event);
        t += Duration::seconds(90);
        let mut method = *pick(&mut life.rng, &PAYMENT_METHODS);
        let fails = if method == "mercado_pago" && device != "desktop" {
            params.mobile_wallet_failure
        } else {
            params.other_payment_failure
        };
        let event = life.with(
            &user_who,
            json!({"type": "track", "event": "Payment Info Entered",
            "properties": {"payment_method": method, "device": device}}),
        );
        life.push(t, event);
        if life.rng.random_bool(fails) {
            let event = life.with(
                &user_who,
                json!({"type": "track", "event": "Payment Failed",
                "properties": {"payment_method": method, "device": device, "reason": "rechazado"}}),
            );
            life.push(t + Duration::seconds(5), event);
            // A buyer who means it tries again with a card.
            method = "tarjeta";
            t += Duration::seconds(60);
            let event = life.with(
                &user_who,
                json!({"type": "track", "event": "Payment Info Entered",
                "properties": {"payment_method": method, "device": device}}),
            );
            life.push(t, event);
        }
        let order_id = format!("ord-{customer}-{n}");
        let event = life.with(&user_who, json!({"type": "track", "event": "Order Completed",
            "properties": {"order_id": order_id, "revenue": value, "total": value, "currency": "MXN",
                           "payment_method": method, "products": lines}}));
        life.push(*at, event);
        transactions.push(Transaction {
            customer_id: user_id.clone(),
            date: at.format("%Y%m%d").to_string(),
            quantity: items,
            amount: value,
        });
        revenue += value;
        // An ordinary support question now and then.
        if life.rng.random_bool(0.06) {
            let (subject, body) = *pick(&mut life.rng, &GOOD_TICKETS);
            let event = life.with(&server_who, json!({"type": "track", "event": "Ticket Created",
                "properties": {"ticket_id": format!("t-{customer}-{n}"), "subject": subject, "body": body,
                               "category": "pedido", "order_id": order_id}}));
            life.push(*at + days(2.0), event);
            let event = life.with(&server_who, json!({"type": "track", "event": "Ticket Closed",
                "properties": {"ticket_id": format!("t-{customer}-{n}"), "resolution": "resuelto", "satisfaction": 5}}));
            life.push(*at + days(3.0), event);
        }
    }
    truth.purchases = purchases.len() as u32;
    truth.revenue_mxn = (revenue * 100.0).round() / 100.0;

    // Those who leave say so first: a ticket gone wrong, then silence.
    if let Some(left) = churned_at {
        truth.alive_at_end = false;
        truth.churned_at = iso(left);
        if life.rng.random_bool(0.6) {
            truth.bad_ticket = true;
            let (subject, body) = *pick(&mut life.rng, &BAD_TICKETS);
            let id = format!("t-{customer}-bad");
            let event = life.with(&server_who, json!({"type": "track", "event": "Ticket Created",
                "properties": {"ticket_id": id, "subject": subject, "body": body, "category": "queja"}}));
            life.push(left + days(3.0), event);
            let event = life.with(
                &server_who,
                json!({"type": "track", "event": "Ticket Closed",
                "properties": {"ticket_id": id, "resolution": "sin resolver", "satisfaction": 1}}),
            );
            life.push(left + days(12.0), event);
        }
        // A few visits, further and further apart.
        let mut gap = 5.0;
        let mut t = left;
        for _ in 0..life.rng.random_range(0..3) {
            t += days(gap);
            gap *= 3.0;
            t = life.visit(&user_who, t, &preference, app);
        }
    } else {
        // Active customers keep browsing between purchases.
        let visits = (purchases.len() as u32).saturating_mul(2).max(1);
        let last = config.end;
        for _ in 0..visits {
            let at =
                signup + days(life.rng.random::<f64>() * (last - signup).num_days().max(1) as f64);
            life.visit(&user_who, at, &preference, app);
        }
    }

    // A survey two weeks after the first purchase, its score following what happens next.
    if let Some(first_purchase) = purchases.first()
        && life.rng.random_bool(0.5)
    {
        let leaving_soon = churned_at.is_some() && purchases.len() <= 3;
        let score: u8 = if leaving_soon || truth.bad_ticket {
            life.rng.random_range(0..7)
        } else if life.rng.random_bool(0.6) {
            life.rng.random_range(9..11)
        } else {
            life.rng.random_range(7..9)
        };
        let comment = match score {
            0..=6 => *pick(&mut life.rng, &DETRACTOR_COMMENTS),
            7..=8 => *pick(&mut life.rng, &PASSIVE_COMMENTS),
            _ => *pick(&mut life.rng, &PROMOTER_COMMENTS),
        };
        truth.nps = Some(score);
        let event = life.with(
            &server_who,
            json!({"type": "track", "event": "Survey Responded",
            "properties": {"survey": "nps", "score": score, "comment": comment}}),
        );
        life.push(*first_purchase + days(14.0), event);
    }

    // The club: a monthly subscription, cancelled a month after the customer leaves.
    if let Some(first_purchase) = purchases.first()
        && life.rng.random_bool(0.15)
    {
        truth.subscribed = true;
        let event = life.with(
            &server_who,
            json!({"type": "track", "event": "Subscription Started",
            "properties": {"plan": "club_mensual", "price": 149.0, "currency": "MXN"}}),
        );
        life.push(*first_purchase, event);
        let ends = churned_at.map(|c| c + days(30.0));
        let mut month = *first_purchase + days(30.0);
        while month <= config.end && ends.is_none_or(|e| month < e) {
            let event = life.with(
                &server_who,
                json!({"type": "track", "event": "Subscription Renewed",
                "properties": {"plan": "club_mensual", "revenue": 149.0, "currency": "MXN"}}),
            );
            life.push(month, event);
            month += days(30.0);
        }
        if let Some(end) = ends {
            let event = life.with(&server_who, json!({"type": "track", "event": "Subscription Cancelled",
                "properties": {"plan": "club_mensual", "reason": if truth.bad_ticket { "mal servicio" } else { "ya no lo uso" }}}));
            life.push(end, event);
        }
    }

    // Monthly campaigns to those who accept marketing.
    if !refuses_marketing {
        let mut month = Utc
            .with_ymd_and_hms(signup.year(), signup.month(), 5, 15, 0, 0)
            .single()
            .unwrap_or(signup);
        while month <= config.end {
            if month > signup {
                let name = format!("boletin-{}-{:02}", month.year(), month.month());
                let engaged = churned_at.is_none_or(|c| month < c);
                let event = life.with(
                    &server_who,
                    json!({"type": "track", "event": "Email Sent",
                    "properties": {"campaign": name, "subject": "Novedades de temporada"}}),
                );
                life.push(month, event);
                if life.rng.random_bool(if engaged { 0.45 } else { 0.12 }) {
                    let event = life.with(&server_who, json!({"type": "track", "event": "Email Opened", "properties": {"campaign": name}}));
                    life.push(month + Duration::hours(3), event);
                    if life.rng.random_bool(0.3) {
                        let event = life.with(&server_who, json!({"type": "track", "event": "Email Clicked", "properties": {"campaign": name}}));
                        life.push(month + Duration::hours(3) + Duration::minutes(2), event);
                    }
                }
                if life.rng.random_bool(if engaged { 0.01 } else { 0.05 }) {
                    let event = life.with(&server_who, json!({"type": "track", "event": "Email Unsubscribed", "properties": {"campaign": name}}));
                    life.push(month + Duration::hours(4), event);
                    let event = json!({"type": "identify", "userId": user_id,
                        "context": {"consent": {"categoryPreferences": {"analytics": true, "marketing": false, "personalization": true}}}});
                    life.push(month + Duration::hours(4) + Duration::seconds(1), event);
                    break;
                }
            }
            let next = month + days(31.0);
            month = Utc
                .with_ymd_and_hms(next.year(), next.month(), 5, 15, 0, 0)
                .single()
                .unwrap_or(next);
        }
    }

    // A second device some time after sign-up: anonymous first, then logged in.
    if life.rng.random_bool(0.4) {
        let second = format!("anon-{:016x}", life.rng.random::<u64>());
        let at = signup + days(life.rng.random::<f64>() * 60.0);
        let anonymous_second = life.who(None, Some(&second));
        let t = life.visit(&anonymous_second, at, &preference, !app);
        let event = json!({"type": "identify", "userId": user_id, "anonymousId": second});
        life.push(t, event);
    }

    // Some are in the CRM; one in five of those under another mailbox. Drawn from a stream of
    // their own, so who is in the CRM does not change with where the world ends (how many
    // newsletters a life holds changes what the main stream draws after them).
    let mut crm_rng = ChaCha8Rng::seed_from_u64(seed);
    crm_rng.set_stream(1);
    let mut crm_duplicate = false;
    let contact = crm_rng.random_bool(0.3).then(|| {
        let other_mailbox = crm_rng.random_bool(0.2);
        crm_duplicate = other_mailbox;
        let crm_email = if other_mailbox {
            // A work address: the name with the second surname's initial, at an employer, so
            // two namesakes' contacts are seldom given one address (they would be joined as one
            // person by it).
            let second_surname = pick(&mut crm_rng, &LAST_NAMES);
            let initial: String = fold(second_surname).chars().take(1).collect();
            let employer = pick(&mut crm_rng, &EMPLOYER_DOMAINS);
            format!("{}.{}.{initial}@{employer}", fold(first), fold(last))
        } else {
            email.clone()
        };
        let crm_phone = if gives_phone && !other_mailbox {
            // Sales teams still type the old mobile prefix.
            format!("044 {}", phone.trim_start_matches("+52 "))
        } else {
            String::new()
        };
        ContactRow {
            customer_number: format!("C{customer:07}"),
            name: name.clone(),
            email: crm_email,
            phone: crm_phone,
            city: city.to_string(),
            // A day's date, read as its midnight in Mexico City (06:00 UTC): a day before the
            // end at the latest, so no record is dated after the world ends.
            updated_at: (signup + days(7.0))
                .min(config.end - days(1.0))
                .format("%d/%m/%Y")
                .to_string(),
        }
    });

    truth.crm_duplicate = crm_duplicate;
    truth.in_crm = contact.is_some();
    truth.segment = match (purchases.len(), churned_at) {
        (0, _) => "browser",
        (1, Some(_)) => "one_time",
        (_, Some(_)) => "lost",
        (_, None) => "active",
    };
    let mut events = life.events;
    events.sort_by(|a, b| a["timestamp"].as_str().cmp(&b["timestamp"].as_str()));
    Simulated {
        events,
        contact,
        transactions,
        truth,
    }
}

/// The catalogue every customer shops from.
pub fn catalogue() -> Vec<Product> {
    catalogue::products()
}

#[cfg(test)]
mod wait_tests {
    use super::*;

    #[test]
    fn waits_drawn_from_tiny_rates_never_overflow_a_date() {
        // A purchase rate of 1e-9 a week gives waits near 1e9 weeks; once one million customers
        // drew such a wait and the date arithmetic panicked.
        let start = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        for wait in [1e9, 1e300, f64::INFINITY] {
            assert!(start + weeks(wait) > start + days(365.0 * 900.0));
        }
        assert_eq!(days(-3.0), Duration::zero());
        assert_eq!(days(f64::NAN), Duration::zero());
    }
}
