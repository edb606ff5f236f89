//! The one integration-test binary of `matching-core`.

mod props;
mod scenarios;
