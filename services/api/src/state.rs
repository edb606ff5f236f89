//! What every handler can reach.

use std::sync::Arc;

use async_nats::jetstream;

use crate::db::DbPool;
use crate::markets::Markets;
use crate::settings::Settings;

#[derive(Clone)]
pub struct AppState {
    pub db: DbPool,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub markets: Arc<Markets>,
    pub settings: Arc<Settings>,
    /// The auth callout's issuer, the system connection, the grant key (`node_access`).
    pub node_access: Arc<crate::node_access::NodeAccess>,
    /// The key-encryption key of private models (`models_kek_file`); `None`: models are off.
    pub models_kek: Option<Arc<gridbook_sealed::Kek>>,
    /// Each compute market's provider aggregate, with when it was read (`markets`).
    pub aggregates: Arc<crate::markets::AggregateCache>,
}
