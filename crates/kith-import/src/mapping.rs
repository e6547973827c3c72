//! Which column means what: flags (`--map email=Correo`), a small TOML file, and auto-detection of
//! the usual column names for whatever neither names.

use std::collections::BTreeMap;
use std::path::Path;

use kith_identity::fold_accent;
use serde::Deserialize;
use thiserror::Error;

/// What a column of a contacts file holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ContactField {
    UserId,
    Email,
    Phone,
    /// When the row was true (e.g. `updated_at`); traits are ordered by it.
    Time,
    /// An identifier of a declared external type, e.g. `customer_number`.
    External(String),
    /// A trait under this name.
    Trait(String),
    Ignore,
}

impl ContactField {
    /// Parses the left side of `--map FIELD=COLUMN`.
    pub fn parse(text: &str) -> Result<ContactField, MappingError> {
        let text = text.trim();
        let field = match text {
            "user_id" | "userId" => ContactField::UserId,
            "email" => ContactField::Email,
            "phone" => ContactField::Phone,
            "timestamp" | "time" => ContactField::Time,
            _ => {
                if let Some(name) = text.strip_prefix("trait:").filter(|n| !n.trim().is_empty()) {
                    ContactField::Trait(name.trim().to_string())
                } else if let Some(name) = text
                    .strip_prefix("external:")
                    .filter(|n| !n.trim().is_empty())
                {
                    ContactField::External(name.trim().to_string())
                } else {
                    return Err(MappingError::UnknownField {
                        field: text.to_string(),
                        allowed: "user_id, email, phone, timestamp, trait:NAME or external:TYPE",
                    });
                }
            }
        };
        Ok(field)
    }

    pub fn describe(&self) -> String {
        match self {
            ContactField::UserId => "user_id".into(),
            ContactField::Email => "email".into(),
            ContactField::Phone => "phone".into(),
            ContactField::Time => "timestamp".into(),
            ContactField::External(t) => format!("external:{t}"),
            ContactField::Trait(t) => format!("trait:{t}"),
            ContactField::Ignore => "ignored".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MappingError {
    #[error("`{field}` is not a field a column can map to; use {allowed}")]
    UnknownField {
        field: String,
        /// The fields this kind of import knows.
        allowed: &'static str,
    },
    #[error("`{0}` is not FIELD=COLUMN (e.g. `email=Correo electrónico`)")]
    NotAnAssignment(String),
    #[error(
        "the column `{column}` (mapped to {field}) is not in the file; its columns are: {available}"
    )]
    MissingColumn {
        column: String,
        field: String,
        available: String,
    },
    #[error("{field} is mapped to two columns, `{first}` and `{second}`; map it once")]
    MappedTwice {
        field: String,
        first: String,
        second: String,
    },
    #[error(
        "no column holds the {field}; map one with --map {field}=COLUMN (columns: {available})"
    )]
    Unmapped { field: String, available: String },
    #[error(
        "this line has no {field}: none of its keys with a value holds it (keys: {available}); \
         a key whose value is null counts as none, or map one with --map {field}=KEY"
    )]
    UnmappedOnLine { field: String, available: String },
    #[error("cannot read the mapping file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("the delimiter must be one character, got `{0}`")]
    Delimiter(String),
}

/// The TOML mapping file (`--mapping FILE`); flags given as well win.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    pub format: Option<String>,
    pub delimiter: Option<String>,
    pub time_format: Option<String>,
    pub timezone: Option<String>,
    pub source: Option<String>,
    #[serde(default)]
    pub only_mapped: bool,
    #[serde(default)]
    pub ignore: Vec<String>,
    /// FIELD = COLUMN.
    #[serde(default)]
    pub map: BTreeMap<String, String>,
}

impl MappingFile {
    pub fn load(path: &Path) -> Result<MappingFile, MappingError> {
        let error = |reason: String| MappingError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        toml::from_str(&text).map_err(|e| error(e.to_string()))
    }

    /// The delimiter as a byte, if one is set.
    pub fn delimiter_byte(text: &str) -> Result<u8, MappingError> {
        let text = if text == "\\t" || text == "tab" {
            "\t"
        } else {
            text
        };
        match text.as_bytes() {
            [byte] => Ok(*byte),
            _ => Err(MappingError::Delimiter(text.to_string())),
        }
    }
}

/// Parses `FIELD=COLUMN`.
pub fn parse_assignment(text: &str) -> Result<(ContactField, String), MappingError> {
    let (field, column) = text
        .split_once('=')
        .ok_or_else(|| MappingError::NotAnAssignment(text.to_string()))?;
    if column.trim().is_empty() {
        return Err(MappingError::NotAnAssignment(text.to_string()));
    }
    Ok((ContactField::parse(field)?, column.trim().to_string()))
}

/// How every column of a contacts file is read.
#[derive(Debug, Clone, Default)]
pub struct ContactMapping {
    /// Column → field, as the user stated.
    explicit: BTreeMap<String, ContactField>,
    /// Columns auto-detection may not claim because a field is already mapped explicitly.
    taken: Vec<ContactField>,
    ignore: Vec<String>,
    /// Unmapped columns are dropped instead of becoming traits.
    only_mapped: bool,
}

/// Column names (lower-cased, letters and digits only) that auto-detection recognises.
const USER_ID_NAMES: &[&str] = &["userid", "user", "uid"];
const EMAIL_NAMES: &[&str] = &[
    "email",
    "emailaddress",
    "mail",
    "correo",
    "correoelectronico",
];
const PHONE_NAMES: &[&str] = &[
    "phone",
    "phonenumber",
    "mobile",
    "mobilephone",
    "cell",
    "cellphone",
    "telefono",
    "celular",
    "movil",
    "tel",
    "whatsapp",
];
const TIME_NAMES: &[&str] = &[
    "updatedat",
    "lastupdated",
    "modifiedat",
    "lastmodified",
    "lastmodifieddate",
    "updated",
    "actualizado",
    "fechaactualizacion",
    "ultimaactualizacion",
    "modificado",
    "fechamodificacion",
];

/// Lower-case ASCII letters and digits only, with Spanish and Portuguese accents folded, so
/// `Correo Electrónico`, `E-mail` and `Teléfono` match their plain spellings.
pub(crate) fn squash(name: &str) -> String {
    name.chars()
        .map(|c| fold_accent(c.to_lowercase().next().unwrap_or(c)))
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// How each column of a file is read, for the importers whose fields are an enum `F`: the
/// explicit assignments first (each must name a column the file has), then the usual names in
/// `known` (each field claimed once), then `unknown(column)` — or `ignored` with `only_mapped`.
pub(crate) fn plan_columns<F: Clone + PartialEq>(
    headers: &[String],
    explicit: &[(F, String)],
    known: &[(&[&str], F)],
    only_mapped: bool,
    describe: impl Fn(&F) -> String,
    unknown: impl Fn(&str) -> F,
    ignored: F,
) -> Result<Vec<(String, F)>, MappingError> {
    for (field, column) in explicit {
        if !headers.iter().any(|h| h == column) {
            return Err(MappingError::MissingColumn {
                column: column.clone(),
                field: describe(field),
                available: headers.join(", "),
            });
        }
    }
    let mut claimed: Vec<F> = explicit.iter().map(|(f, _)| f.clone()).collect();
    let mut plan = Vec::with_capacity(headers.len());
    for column in headers {
        if let Some((field, _)) = explicit.iter().find(|(_, c)| c == column) {
            plan.push((column.clone(), field.clone()));
            continue;
        }
        let squashed = squash(column);
        let detected = known
            .iter()
            .find(|(names, field)| names.contains(&squashed.as_str()) && !claimed.contains(field))
            .map(|(_, field)| field.clone());
        let field = match detected {
            Some(field) => {
                claimed.push(field.clone());
                field
            }
            None if only_mapped => ignored.clone(),
            None => unknown(column),
        };
        plan.push((column.clone(), field));
    }
    Ok(plan)
}

/// `First Name` → `first_name`, `customerNumber` → `customer_number`.
/// `name`, or `name_2`, `name_3`… if `taken` has it already (in any case), added to `taken`: so
/// no column, trait or property of a file hides another of the same name.
pub(crate) fn claim_name(name: &str, taken: &mut Vec<String>) -> String {
    let mut unique = name.to_string();
    let mut n = 2;
    while taken.iter().any(|t| t.eq_ignore_ascii_case(&unique)) {
        unique = format!("{name}_{n}");
        n += 1;
    }
    taken.push(unique.clone());
    unique
}

pub fn trait_name(column: &str) -> String {
    let mut out = String::with_capacity(column.len() + 4);
    let mut previous_lower = false;
    for c in column.trim().chars() {
        if c.is_alphanumeric() {
            if c.is_uppercase() && previous_lower && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
            previous_lower = c.is_lowercase() || c.is_ascii_digit();
        } else {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            previous_lower = false;
        }
    }
    let trimmed = out.trim_end_matches('_');
    if trimmed.is_empty() {
        "column".to_string()
    } else {
        trimmed.to_string()
    }
}

impl ContactMapping {
    /// Builds the mapping from explicit assignments, checking them against the file's columns
    /// when it has a header line.
    pub fn new(
        assignments: Vec<(ContactField, String)>,
        ignore: Vec<String>,
        only_mapped: bool,
        headers: Option<&[String]>,
    ) -> Result<ContactMapping, MappingError> {
        let mut explicit: BTreeMap<String, ContactField> = BTreeMap::new();
        let mut taken: Vec<ContactField> = Vec::new();
        let mut by_field: BTreeMap<ContactField, String> = BTreeMap::new();
        for (field, column) in assignments {
            if let Some(headers) = headers
                && !headers.iter().any(|h| h == &column)
            {
                return Err(MappingError::MissingColumn {
                    column,
                    field: field.describe(),
                    available: headers.join(", "),
                });
            }
            let singular = matches!(
                field,
                ContactField::UserId
                    | ContactField::Email
                    | ContactField::Phone
                    | ContactField::Time
            );
            if singular && let Some(first) = by_field.get(&field) {
                return Err(MappingError::MappedTwice {
                    field: field.describe(),
                    first: first.clone(),
                    second: column,
                });
            }
            by_field.insert(field.clone(), column.clone());
            taken.push(field.clone());
            explicit.insert(column, field);
        }
        Ok(ContactMapping {
            explicit,
            taken,
            ignore,
            only_mapped,
        })
    }

    /// What `column` holds.
    pub fn field(&self, column: &str) -> ContactField {
        if let Some(field) = self.explicit.get(column) {
            return field.clone();
        }
        if self.ignore.iter().any(|c| c == column) || self.only_mapped {
            return ContactField::Ignore;
        }
        let squashed = squash(column);
        let detected = [
            (USER_ID_NAMES, ContactField::UserId),
            (EMAIL_NAMES, ContactField::Email),
            (PHONE_NAMES, ContactField::Phone),
            (TIME_NAMES, ContactField::Time),
        ]
        .into_iter()
        .find(|(names, _)| names.iter().any(|n| n.eq_ignore_ascii_case(&squashed)))
        .map(|(_, field)| field);
        match detected {
            Some(field) if !self.taken.contains(&field) => field,
            _ => ContactField::Trait(trait_name(column)),
        }
    }

    /// A description of the mapping that changes whenever its meaning does (part of each row's
    /// message id: importing the same file with another mapping is a different import).
    pub fn fingerprint(&self) -> String {
        let explicit: Vec<String> = self
            .explicit
            .iter()
            .map(|(column, field)| format!("{}={column}", field.describe()))
            .collect();
        format!(
            "map[{}] ignore[{}] only_mapped={}",
            explicit.join(","),
            self.ignore.join(","),
            self.only_mapped
        )
    }

    /// How each of `headers` is read, for the summary printed before an import starts.
    pub fn plan(&self, headers: &[String]) -> Vec<(String, ContactField)> {
        let mut claimed: Vec<ContactField> = Vec::new();
        let planned: Vec<(String, ContactField)> = headers
            .iter()
            .map(|column| {
                let mut field = self.field(column);
                let singular = matches!(
                    field,
                    ContactField::UserId
                        | ContactField::Email
                        | ContactField::Phone
                        | ContactField::Time
                );
                if singular && !self.explicit.contains_key(column) {
                    if claimed.contains(&field) {
                        field = ContactField::Trait(trait_name(column));
                    } else {
                        claimed.push(field.clone());
                    }
                }
                (column.clone(), field)
            })
            .collect();
        // Each trait once, and none under the name an identifier is written as: `correo,email`
        // maps correo to the email, and the email column is the trait `email_2`, not a second
        // email over the first; `Nombre completo,nombre_completo` are two traits.
        let mut taken: Vec<String> = planned
            .iter()
            .filter_map(|(_, field)| match field {
                ContactField::Email => Some("email".to_string()),
                ContactField::Phone => Some("phone".to_string()),
                ContactField::UserId => Some("user_id".to_string()),
                _ => None,
            })
            .collect();
        planned
            .into_iter()
            .map(|(column, field)| match field {
                ContactField::Trait(name) => {
                    (column, ContactField::Trait(claim_name(&name, &mut taken)))
                }
                other => (column, other),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A column named like an identifier already mapped, or like another trait, is a trait of
    /// its own name: nothing writes over the email or over another column.
    #[test]
    fn traits_are_named_once_and_never_as_a_mapped_identifier() {
        let mapping = ContactMapping::new(Vec::new(), Vec::new(), false, None).unwrap();
        let plan = mapping.plan(&[
            "correo".to_string(),
            "email".to_string(),
            "Nombre completo".to_string(),
            "nombre_completo".to_string(),
        ]);
        let fields: Vec<ContactField> = plan.into_iter().map(|(_, f)| f).collect();
        assert_eq!(
            fields,
            [
                ContactField::Email,
                ContactField::Trait("email_2".into()),
                ContactField::Trait("nombre_completo".into()),
                ContactField::Trait("nombre_completo_2".into()),
            ]
        );
    }

    #[test]
    fn columns_are_recognised_by_their_usual_names() {
        let mapping = ContactMapping::new(Vec::new(), Vec::new(), false, None).unwrap();
        assert_eq!(mapping.field("Correo Electrónico"), ContactField::Email);
        assert_eq!(mapping.field("E-mail"), ContactField::Email);
        assert_eq!(mapping.field("Teléfono"), ContactField::Phone);
        assert_eq!(
            mapping.field("Nombre Completo"),
            ContactField::Trait("nombre_completo".into())
        );
        assert_eq!(mapping.field("Mobile Phone"), ContactField::Phone);
        assert_eq!(mapping.field("user_id"), ContactField::UserId);
        assert_eq!(mapping.field("Updated At"), ContactField::Time);
        assert_eq!(
            mapping.field("First Name"),
            ContactField::Trait("first_name".into())
        );
        assert_eq!(
            mapping.field("customerNumber"),
            ContactField::Trait("customer_number".into())
        );
    }

    #[test]
    fn explicit_assignments_win_and_are_checked_against_the_header() {
        let headers: Vec<String> = ["Correo", "Email", "Plan"].map(String::from).to_vec();
        let mapping = ContactMapping::new(
            vec![
                (ContactField::Email, "Correo".into()),
                (ContactField::parse("trait:tier").unwrap(), "Plan".into()),
            ],
            Vec::new(),
            false,
            Some(&headers),
        )
        .unwrap();
        assert_eq!(mapping.field("Correo"), ContactField::Email);
        // `Email` would be detected, but email is mapped already: it stays a trait.
        assert_eq!(mapping.field("Email"), ContactField::Trait("email".into()));
        assert_eq!(mapping.field("Plan"), ContactField::Trait("tier".into()));

        let missing = ContactMapping::new(
            vec![(ContactField::Phone, "Mobile".into())],
            Vec::new(),
            false,
            Some(&headers),
        )
        .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "the column `Mobile` (mapped to phone) is not in the file; its columns are: Correo, Email, Plan"
        );
        assert!(matches!(
            parse_assignment("mail=Correo"),
            Err(MappingError::UnknownField { field, .. }) if field == "mail"
        ));
        assert!(matches!(
            parse_assignment("email"),
            Err(MappingError::NotAnAssignment(_))
        ));
    }

    #[test]
    fn two_columns_detected_as_one_field_keep_the_first_and_make_the_second_a_trait() {
        let mapping = ContactMapping::new(Vec::new(), Vec::new(), false, None).unwrap();
        let headers: Vec<String> = ["email", "mail", "phone"].map(String::from).to_vec();
        assert_eq!(
            mapping.plan(&headers),
            vec![
                ("email".to_string(), ContactField::Email),
                ("mail".to_string(), ContactField::Trait("mail".into())),
                ("phone".to_string(), ContactField::Phone),
            ]
        );
    }
}
