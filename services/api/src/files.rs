//! TODO(helper): see lib.rs code map.

/// Routes of this module (mounted by `app`).
pub fn configure(_cfg: &mut actix_web::web::ServiceConfig) {}

/// Creates the `gridbook_files` object store bucket if it is missing (idempotent).
pub async fn ensure_bucket(_state: &crate::state::AppState) -> anyhow::Result<()> {
    Ok(())
}
