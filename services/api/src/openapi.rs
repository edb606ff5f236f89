//! The OpenAPI 3.1 document, generated from the code with utoipa and served at
//! `GET /openapi.json`.
//!
//! How a module registers its routes:
//! 1. annotate each handler with `#[utoipa::path(post, path = "/v1/…", tag = "…", request_body
//!    = …, params(…), responses((status = …, body = …)), security(("api_key" = []),
//!    ("session" = [])))]` (the full path, `/v1` included); request and response types derive
//!    `utoipa::ToSchema` (query structs `utoipa::IntoParams`); errors are `ErrorResponse`;
//! 2. declare the module's document next to its handlers:
//!    `#[derive(utoipa::OpenApi)] #[openapi(paths(create_job, get_job, …))] pub struct ApiDoc;`
//! 3. add one line to [`document`] below: `doc.merge(crate::jobs::ApiDoc::openapi());`.
//!
//! Schemas referenced from `body = …` are collected automatically (utoipa 5). Security schemes:
//! `api_key` (`Authorization: Bearer gbk_<prefix>_<secret>`) and `session` (cookie
//! `gridbook_session`). Every creating POST documents the optional `Idempotency-Key` header.

use std::sync::LazyLock;

use actix_web::{HttpResponse, web};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Routes of this module (mounted at the root by `app`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/openapi.json").route(web::get().to(serve)));
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("gbk_<prefix>_<secret>")
                    .build(),
            ),
        );
        c.add_security_scheme(
            "node_credential",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("gbn_<hex>").build()),
        );
        c.add_security_scheme(
            "assignment_grant",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("gbg_<hex>").build()),
        );
        c.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::auth::SESSION_COOKIE,
            ))),
        );
    }
}

/// Identity, money and health (this crate's own routes).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Gridbook API",
        version = "1",
        description = "An open marketplace for GPU batch compute. Money is integer minor units of \
            credits. Errors are `{\"error\": {\"code\", \"message\", \"field\"?}}` with stable \
            snake_case codes. Every POST that creates something honours an optional \
            `Idempotency-Key` header (1-255 characters): the same key and request replay the first \
            response; the same key with another request is 422 `idempotency_key_reused`. Requests \
            are rate-limited per credential and per client IP (429 `rate_limited`, Retry-After); a \
            request body that stalls is cut off with 408 `request_timeout`; text fields may not \
            contain NUL (400 naming the field)."
    ),
    paths(
        crate::health::healthz,
        crate::health::readyz,
        serve,
        crate::accounts::sign_up,
        crate::accounts::log_in,
        crate::accounts::log_out,
        crate::accounts::me,
        crate::accounts::create_key,
        crate::accounts::list_keys,
        crate::accounts::revoke_key,
        crate::money::credit,
        crate::money::balance,
        crate::money::statement,
    ),
    components(schemas(crate::error::ErrorResponse, crate::auth::Role, crate::auth::Scope)),
    modifiers(&Security),
    tags(
        (name = "identity", description = "sign-up, sessions, API keys"),
        (name = "money", description = "credits, balance, statement"),
        (name = "health", description = "probes"),
        (name = "docs", description = "this document"),
    )
)]
pub struct ApiDoc;

/// The whole document: this crate's routes plus every module's `ApiDoc`. Every route mounted by
/// `app::routes` must appear here: the integration test `openapi::every_mounted_route_is_documented`
/// walks the mounted routes and fails on an undocumented one.
pub fn document() -> utoipa::openapi::OpenApi {
    #[allow(unused_mut)]
    let mut doc = ApiDoc::openapi();
    // Other modules: doc.merge(crate::<module>::ApiDoc::openapi());
    doc.merge(crate::files::ApiDoc::openapi());
    doc.merge(crate::models::ApiDoc::openapi());
    doc.merge(crate::jobs::ApiDoc::openapi());
    doc.merge(crate::nodes::ApiDoc::openapi());
    doc.merge(crate::identity::ApiDoc::openapi());
    doc.merge(crate::node_access::ApiDoc::openapi());
    doc.merge(crate::dead_letters::ApiDoc::openapi());
    doc.merge(crate::asks::ApiDoc::openapi());
    doc.merge(crate::assignments::ApiDoc::openapi());
    doc.merge(crate::verification::ApiDoc::openapi());
    doc.merge(crate::protocol::ApiDoc::openapi());
    doc.merge(crate::token::ApiDoc::openapi());
    doc.merge(crate::markets::ApiDoc::openapi());
    doc
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    document()
        .to_json()
        .unwrap_or_else(|e| format!("{{\"error\":{{\"code\":\"internal\",\"message\":\"{e}\"}}}}"))
});

/// The OpenAPI document (this one).
#[utoipa::path(get, path = "/openapi.json", tag = "docs",
    responses((status = 200, description = "this OpenAPI 3.1 document (JSON)")))]
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT.as_str())
}
