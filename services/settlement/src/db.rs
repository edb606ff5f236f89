//! Diesel is synchronous: every database call runs on tokio's blocking pool with a connection
//! that moves into the task and back (reconnected after a transient error).

use diesel::PgConnection;

use crate::error::{Result, SettlementError};

pub struct Db {
    url: String,
    conn: Option<PgConnection>,
}

impl Db {
    pub fn new(url: &str) -> Self {
        Db {
            url: url.to_owned(),
            conn: None,
        }
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn with<T, F>(&mut self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConnection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.take();
        let url = self.url.clone();
        let (conn, r) = tokio::task::spawn_blocking(move || {
            let mut conn = match conn {
                Some(c) => c,
                None => match gridbook_db::connect(&url) {
                    Ok(c) => c,
                    Err(e) => return (None, Err(SettlementError::from(e))),
                },
            };
            let r = f(&mut conn);
            (Some(conn), r)
        })
        .await
        .map_err(|_| SettlementError::TaskFailed)?;
        // After a transient failure the connection may be broken: start afresh next time.
        if !matches!(&r, Err(e) if e.is_transient()) {
            self.conn = conn;
        }
        r
    }
}
