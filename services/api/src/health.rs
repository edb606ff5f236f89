//! Probes: `GET /healthz` (liveness: the process answers) and `GET /readyz` (readiness: a
//! database query succeeds within 2 s and the NATS connection is up; otherwise 503 with the
//! JSON error shape, code `not_ready`, naming what failed).

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use diesel::RunQueryDsl;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorResponse};
use crate::state::AppState;

const DB_TIMEOUT: Duration = Duration::from_secs(2);

/// Routes of this module (mounted at the root by `app`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/healthz").route(web::get().to(healthz)))
        .service(web::resource("/readyz").route(web::get().to(readyz)));
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` (liveness) or `ready`.
    pub status: String,
    /// Per dependency: `ok` or what is wrong.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Check {
    pub name: String,
    pub status: String,
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
        checks: Vec::new(),
    })
}

/// Readiness: database and NATS.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, description = "`not_ready`", body = ErrorResponse))
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let db = {
        let pool = state.db.clone();
        let query = actix_web::rt::task::spawn_blocking(move || -> Result<(), String> {
            let mut c = pool
                .get_timeout(DB_TIMEOUT)
                .map_err(|_| "no connection".to_owned())?;
            diesel::sql_query("SELECT 1")
                .execute(&mut c)
                .map(|_| ())
                .map_err(|_| "query failed".to_owned())
        });
        match tokio::time::timeout(DB_TIMEOUT + Duration::from_millis(500), query).await {
            Ok(Ok(Ok(()))) => "ok".to_owned(),
            Ok(Ok(Err(e))) => e,
            Ok(Err(_)) => "check panicked".to_owned(),
            Err(_) => "timed out".to_owned(),
        }
    };
    let nats = match state.nats.connection_state() {
        async_nats::connection::State::Connected => "ok".to_owned(),
        other => format!("{other}").to_lowercase(),
    };
    let checks = vec![
        Check {
            name: "database".into(),
            status: db,
        },
        Check {
            name: "nats".into(),
            status: nats,
        },
    ];
    if checks.iter().all(|c| c.status == "ok") {
        HttpResponse::Ok().json(Health {
            status: "ready".into(),
            checks,
        })
    } else {
        let what = checks
            .iter()
            .map(|c| format!("{}: {}", c.name, c.status))
            .collect::<Vec<_>>()
            .join("; ");
        tracing::warn!(checks = %what, "not ready");
        HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE).json(
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", what).body(),
        )
    }
}
