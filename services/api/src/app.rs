//! `Application::build(settings)`: migrations, NATS, the HTTP server bound (port 0 in tests).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use tracing::info;

use crate::error::ApiError;
use crate::markets::Markets;
use crate::settings::Settings;
use crate::state::AppState;

pub struct Application {
    port: u16,
    server: Server,
    pub state: AppState,
}

/// Bad JSON, bad query strings and bad paths answer with the API's JSON error, naming what is
/// wrong (serde's message carries the field and the position).
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(|err, _req| {
            use actix_web::error::JsonPayloadError as E;
            let e = match &err {
                E::OverflowKnownLength { length, limit } => ApiError::new(
                    actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("body of {length} bytes exceeds the limit of {limit}"),
                ),
                E::Overflow { limit } => ApiError::new(
                    actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("body exceeds the limit of {limit} bytes"),
                ),
                E::ContentType => ApiError::new(
                    actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send Content-Type: application/json",
                ),
                E::Deserialize(e) => ApiError::new(
                    actix_web::http::StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("request body: {e}"),
                ),
                other => ApiError::new(
                    actix_web::http::StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("request body: {other}"),
                ),
            };
            e.into()
        })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("query string: {err}"),
        )
        .into()
    })
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err, _req| {
        ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("path: {err}"),
        )
        .into()
    })
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let markets = Arc::new(Markets::load(&settings.markets_file)?);
        let db = crate::db::pool(
            &settings.database_url,
            settings.db_pool_size,
            Duration::from_secs(5),
        )?;
        {
            let db = db.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let mut c = db.get()?;
                gridbook_ledger::run_migrations(&mut c)?;
                Ok(())
            })
            .await??;
        }
        let nats = async_nats::ConnectOptions::new()
            .name("gridbook-api")
            .connect(&settings.nats_url)
            .await?;
        let js = async_nats::jetstream::new(nats.clone());
        let state = AppState {
            db,
            nats,
            js,
            markets,
            settings: Arc::new(settings.clone()),
        };
        crate::files::ensure_bucket(&state).await?;

        let listener = TcpListener::bind(&settings.bind)?;
        let port = listener.local_addr()?.port();
        let data = web::Data::new(state.clone());
        let json_limit = settings.limits.json_bytes;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(json_config(json_limit))
                .app_data(query_config())
                .app_data(path_config())
                .wrap(tracing_actix_web::TracingLogger::default())
                .configure(crate::health::configure)
                .configure(crate::openapi::configure)
                .service(
                    web::scope("/v1")
                        .configure(crate::accounts::configure)
                        .configure(crate::money::configure)
                        .configure(crate::files::configure)
                        .configure(crate::jobs::configure)
                        .configure(crate::nodes::configure)
                        .configure(crate::markets::configure),
                )
                .default_service(web::to(|| async {
                    Err::<actix_web::HttpResponse, _>(ApiError::not_found("route"))
                }))
        })
        .workers(settings.workers.max(1))
        .listen(listener)?
        .run();
        info!(port, "gridbook-api listening");
        Ok(Application {
            port,
            server,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
