//! `TestDb` (feature `testing`): migrates a template database once per migration set — guarded by
//! a PostgreSQL advisory lock against parallel test processes — and gives each test its own fresh
//! database (`CREATE DATABASE … TEMPLATE …`), dropped on `Drop`.

use diesel::{Connection, PgConnection, RunQueryDsl};

/// The variable the test harness sets, e.g. `postgres://postgres@127.0.0.1:55432/postgres`.
pub const DATABASE_URL_VAR: &str = "GRIDBOOK_DATABASE_URL";
const LOCK_KEY: i64 = 0x6772_6964_626f_6f6b; // "gridbook"

/// The server URL from the environment; panics with a clear message when it is missing.
pub fn server_url() -> String {
    std::env::var(DATABASE_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{DATABASE_URL_VAR} is not set: these tests need a PostgreSQL server, e.g. \
             {DATABASE_URL_VAR}=postgres://postgres@127.0.0.1:55432/postgres"
        )
    })
}

pub use crate::with_database;

/// A hash of the migrations' SQL, so a changed migration gets a new template.
fn migrations_fingerprint() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    let mut files = Vec::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p)
                } else {
                    files.push(p)
                }
            }
        }
    }
    files.sort();
    // FNV-1a over names and contents.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in files {
        for b in f
            .to_string_lossy()
            .bytes()
            .chain(std::fs::read(&f).unwrap_or_default())
        {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn admin(url: &str) -> PgConnection {
    PgConnection::establish(url).unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

#[derive(diesel::QueryableByName)]
struct Found {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn exists(conn: &mut PgConnection, db: &str) -> bool {
    let f: Found = diesel::sql_query("SELECT count(*) AS n FROM pg_database WHERE datname = $1")
        .bind::<diesel::sql_types::Text, _>(db)
        .get_result(conn)
        .expect("query pg_database");
    f.n > 0
}

/// Creates (once) the migrated template database and returns its name.
pub fn template() -> String {
    let url = server_url();
    let name = format!("gridbook_tpl_{}", migrations_fingerprint());
    let mut conn = admin(&url);
    diesel::sql_query(format!("SELECT pg_advisory_lock({LOCK_KEY})"))
        .execute(&mut conn)
        .expect("advisory lock");
    if !exists(&mut conn, &name) {
        let building = format!("{name}_building");
        diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)"
        ))
        .execute(&mut conn)
        .expect("drop");
        diesel::sql_query(format!("CREATE DATABASE \"{building}\""))
            .execute(&mut conn)
            .expect("create template");
        {
            let mut t = admin(&with_database(&url, &building));
            crate::run_migrations(&mut t).expect("migrate template");
        }
        diesel::sql_query(format!(
            "ALTER DATABASE \"{building}\" RENAME TO \"{name}\""
        ))
        .execute(&mut conn)
        .expect("rename template");
    }
    diesel::sql_query(format!("SELECT pg_advisory_unlock({LOCK_KEY})"))
        .execute(&mut conn)
        .expect("advisory unlock");
    name
}

/// A fresh database for one test, dropped when this value drops.
pub struct TestDb {
    name: String,
    url: String,
    server: String,
}

impl TestDb {
    /// A fresh, migrated database (a copy of the template).
    pub fn new() -> Self {
        let tpl = template();
        Self::create(Some(&tpl))
    }

    /// A fresh, empty database (no migrations): for migration tests.
    pub fn empty() -> Self {
        Self::create(None)
    }

    fn create(template: Option<&str>) -> Self {
        let server = server_url();
        let name = format!("gridbook_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin(&server);
        let sql = match template {
            Some(t) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{t}\""),
            None => format!("CREATE DATABASE \"{name}\""),
        };
        // Copying a template fails while another session is connected to it; retry briefly.
        let mut tries = 0;
        loop {
            match diesel::sql_query(&sql).execute(&mut conn) {
                Ok(_) => break,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "create test database, retrying");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => panic!("create test database: {e}"),
            }
        }
        let url = with_database(&server, &name);
        TestDb { name, url, server }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn conn(&self) -> PgConnection {
        admin(&self.url)
    }
}

impl Default for TestDb {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut c) = PgConnection::establish(&self.server) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut c);
        }
    }
}
