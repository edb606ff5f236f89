//! TODO(helper): see lib.rs code map.

/// Routes of this module (mounted by `app`).
pub fn configure(_cfg: &mut actix_web::web::ServiceConfig) {}
