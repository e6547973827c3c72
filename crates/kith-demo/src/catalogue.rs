//! The shop: categories and products with MXN prices and names in Spanish.

/// One product.
#[derive(Debug, Clone)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub category: &'static str,
    pub price: f64,
}

/// Categories and the typical price (MXN) of their products.
pub const CATEGORIES: [(&str, f64); 8] = [
    ("Calzado", 1_200.0),
    ("Ropa", 650.0),
    ("Bolsas", 900.0),
    ("Relojes", 2_400.0),
    ("Hogar", 750.0),
    ("Belleza", 380.0),
    ("Deportes", 1_000.0),
    ("Electrónica", 3_500.0),
];

const ITEMS: [&str; 12] = [
    "Clásico",
    "Urbano",
    "Premium",
    "Básico",
    "Edición Limitada",
    "Eco",
    "Sport",
    "Mini",
    "Pro",
    "Vintage",
    "Plus",
    "Lite",
];

/// Twelve products a category, priced around the category's typical price.
pub fn products() -> Vec<Product> {
    let mut out = Vec::new();
    for (c, (category, typical)) in CATEGORIES.iter().enumerate() {
        for (i, item) in ITEMS.iter().enumerate() {
            // A fixed spread from 0.6× to 1.6× the typical price, rounded to 9s like shops do.
            let factor = 0.6 + (i as f64) / (ITEMS.len() as f64 - 1.0);
            let price = ((typical * factor) / 10.0).round() * 10.0 - 1.0;
            out.push(Product {
                sku: format!("sku-{c}{i:02}"),
                name: format!("{category} {item}"),
                category,
                price,
            });
        }
    }
    out
}

pub const CITIES: [(&str, &str); 8] = [
    ("Ciudad de México", "55"),
    ("Guadalajara", "33"),
    ("Monterrey", "81"),
    ("Puebla", "222"),
    ("Querétaro", "442"),
    ("Mérida", "999"),
    ("Tijuana", "664"),
    ("León", "477"),
];

pub const FIRST_NAMES: [&str; 20] = [
    "Ana",
    "Luis",
    "María",
    "José",
    "Sofía",
    "Carlos",
    "Valentina",
    "Juan",
    "Camila",
    "Diego",
    "Fernanda",
    "Jorge",
    "Daniela",
    "Miguel",
    "Regina",
    "Andrés",
    "Ximena",
    "Ricardo",
    "Paola",
    "Emilio",
];

pub const LAST_NAMES: [&str; 20] = [
    "García",
    "Hernández",
    "López",
    "Martínez",
    "González",
    "Pérez",
    "Rodríguez",
    "Sánchez",
    "Ramírez",
    "Cruz",
    "Flores",
    "Gómez",
    "Morales",
    "Vázquez",
    "Reyes",
    "Jiménez",
    "Torres",
    "Díaz",
    "Gutiérrez",
    "Ruiz",
];

/// Where CRM contacts under another mailbox work (fictional companies): a sales team types the
/// work address it was given.
pub const EMPLOYER_DOMAINS: [&str; 12] = [
    "empresa.com.mx",
    "grupoaltamira.com.mx",
    "constructorasol.mx",
    "farmaciasdelvalle.com.mx",
    "logisticanorte.mx",
    "textilesluna.com.mx",
    "agrovida.mx",
    "bancoriente.com.mx",
    "seguroscentro.mx",
    "editorialfaro.com.mx",
    "hotelesbrisa.mx",
    "tecnosur.com.mx",
];

pub const EMAIL_DOMAINS: [&str; 5] = [
    "gmail.com",
    "hotmail.com",
    "outlook.com",
    "yahoo.com.mx",
    "icloud.com",
];
