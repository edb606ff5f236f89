//! PostgreSQL access: an r2d2 pool of diesel connections, used from async handlers through
//! [`run`] (the blocking pool; a handler never blocks the async executor).

use diesel::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool};

use crate::error::{ApiError, ApiResult};

pub type DbPool = Pool<ConnectionManager<PgConnection>>;

/// A pool of at most `size` connections; a request waits at most `timeout` for one.
pub fn pool(url: &str, size: u32, timeout: std::time::Duration) -> anyhow::Result<DbPool> {
    Ok(Pool::builder()
        .max_size(size)
        .connection_timeout(timeout)
        .build(ConnectionManager::new(url))?)
}

/// Runs `f` with a pooled connection on the blocking pool.
pub async fn run<T, F>(pool: &DbPool, f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce(&mut PgConnection) -> ApiResult<T> + Send + 'static,
{
    let pool = pool.clone();
    actix_web::rt::task::spawn_blocking(move || {
        let mut conn = pool.get().map_err(ApiError::unavailable)?;
        f(&mut conn)
    })
    .await
    .map_err(ApiError::internal)?
}
