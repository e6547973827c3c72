//! What every endpoint of the OpenAPI document shares, added in one place rather than in each
//! handler's annotation: how it is authorised, and the error body and statuses it answers.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

/// The body of every error: `{message, code, type, link}` (the codes are in `/docs/errors`).
#[derive(utoipa::ToSchema)]
#[schema(as = Error)]
#[allow(dead_code)] // a schema only: the API writes this shape from `ApiError`
pub struct ErrorSchema {
    /// What was wrong, where, and how to fix it.
    message: String,
    /// A code from `/docs/errors`.
    code: String,
    /// The code's family: `invalid_request`, `auth`, `system` or `internal`.
    #[schema(rename = "type")]
    kind: String,
    /// `/docs/errors#CODE`.
    link: String,
}

/// How an endpoint is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone: health, metrics, this document, the welcome.
    Open,
    /// A write key (Segment's convention: HTTP Basic, the key as user name), or `writeKey` in
    /// the body.
    WriteKey,
    /// A write key as for [`Access::WriteKey`], or in the URL's query: beacons and pixels
    /// cannot send headers.
    WriteKeyOrQuery,
    /// A write key in the path (the settings document analytics.js loads).
    WriteKeyInPath,
    /// A read or admin key as a Bearer token.
    Bearer,
}

fn access(path: &str) -> Access {
    match path {
        "/" | "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/docs/errors" => {
            Access::Open
        }
        "/v1/projects/{write_key}/settings" => Access::WriteKeyInPath,
        "/v1/batch" | "/v1/b" | "/v1/import" | "/v1/{call}" => Access::WriteKey,
        "/beacon/v1/batch" | "/sourceConfig" | "/v1/pixel/{call}" | "/pixel/v1/track"
        | "/pixel/v1/page" => Access::WriteKeyOrQuery,
        _ => Access::Bearer,
    }
}

/// Whether the endpoint makes events durable, and so may answer 429 (overloaded) and 503 (the
/// disk cannot take them) with `Retry-After`.
fn stores_events(path: &str) -> bool {
    matches!(
        path,
        "/v1/batch"
            | "/v1/b"
            | "/v1/import"
            | "/v1/{call}"
            | "/beacon/v1/batch"
            | "/v1/pixel/{call}"
            | "/pixel/v1/track"
            | "/pixel/v1/page"
            | "/v1/imports"
    )
}

pub struct Conventions;

impl utoipa::Modify for Conventions {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "writeKey",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "An ingest (write) key as the user name, with an empty password, as \
                         Segment and RudderStack SDKs send it. Browsers and SDKs may put it in \
                         the body's `writeKey` instead.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "writeKeyQuery",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "writeKey",
                "An ingest key in the URL, for beacons and pixels, which cannot send headers.",
            ))),
        );
        components.add_security_scheme(
            "bearerKey",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A read or admin key (`kith key create --scope read|admin`).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "basicKey",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "A read or admin key as the user name, with an empty password, as an \
                         ingest key is sent.",
                    ))
                    .build(),
            ),
        );
        // A model's definition may be left out: the defaults are used.
        if let Some(fit) = openapi
            .paths
            .paths
            .get_mut("/v1/models/{model}/fit")
            .and_then(|item| item.post.as_mut())
            .and_then(|operation| operation.request_body.as_mut())
        {
            fit.required = Some(utoipa::openapi::Required::False);
        }
        // The paths analytics.js (`/v1/b`) and Segment's historical import (`/v1/import`) use
        // for a batch: the same call as `/v1/batch`, listed under each name.
        if let Some(batch) = openapi.paths.paths.get("/v1/batch").cloned() {
            for (alias, operation_id) in [("/v1/b", "batch_b"), ("/v1/import", "import")] {
                let mut item = batch.clone();
                if let Some(operation) = &mut item.post {
                    // Operation ids must be unique in the document.
                    operation.operation_id = Some(operation_id.to_string());
                }
                openapi.paths.paths.entry(alias.to_string()).or_insert(item);
            }
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            if let Some(operation) = &mut item.post {
                // Every POST reads its body through the same gate.
                add_response(
                    operation,
                    "415",
                    "a `Content-Encoding` other than gzip (the `Accept-Encoding` header of the \
                     answer names what is read)",
                );
            }
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                apply(path, operation);
            }
        }
    }
}

/// Documents `status` for `operation`, unless its own annotation does.
fn add_response(operation: &mut Operation, status: &str, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .build()
                .into()
        });
}

fn apply(path: &str, operation: &mut Operation) {
    let access = access(path);
    let required = |scheme: &str| SecurityRequirement::new(scheme, Vec::<String>::new());
    operation.security = Some(match access {
        Access::Open | Access::WriteKeyInPath => vec![SecurityRequirement::default()],
        Access::WriteKey => vec![required("writeKey")],
        Access::WriteKeyOrQuery => vec![required("writeKey"), required("writeKeyQuery")],
        Access::Bearer => vec![required("bearerKey"), required("basicKey")],
    });
    let mut add = |status: &str, description: &str| add_response(operation, status, description);
    if access != Access::Open {
        add("401", "no key, or one that is unknown or revoked");
        add("403", "a key whose scope does not allow this");
    }
    if stores_events(path) {
        add(
            "429",
            "overloaded: retry after `Retry-After` seconds; nothing was stored",
        );
        add(
            "503",
            "the disk cannot take the events: retry after `Retry-After` seconds",
        );
    }
    // Every error answers the same body.
    for (status, response) in operation.responses.responses.iter_mut() {
        if !status.starts_with('4') && !status.starts_with('5') {
            continue;
        }
        if let RefOr::T(response) = response
            && response.content.is_empty()
        {
            response.content.insert(
                "application/json".to_string(),
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Error")))
                    .build(),
            );
        }
    }
}
