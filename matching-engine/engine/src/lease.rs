//! One writer per market at any time: a lease in a JetStream key-value bucket.
//!
//! The key is the market, the value the engine id. A holder renews it every third of the TTL;
//! the bucket's `max_age` (the TTL) lets a lease of a dead process lapse, after which another
//! engine takes the market over. The same engine id may take its own lease back at once (a
//! restart after `kill -9`). Losing a renewal stops the market task before it writes again.
//! Limit: a holder stalled for longer than the TTL may publish one batch after a successor
//! started; the successor's recovery (`published` from the stream) keeps event sequences
//! gapless, and per-market ids deduplicate within JetStream's window.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    kv::{self, Operation},
};
use bytes::Bytes;
use tracing::info;

pub const BUCKET: &str = "gridbook_engine_leases";

/// The lease bucket, created with `replicas` copies when missing.
pub async fn bucket(js: &jetstream::Context, ttl: Duration, replicas: usize) -> anyhow::Result<kv::Store> {
    gridbook_wire::streams::patiently("the lease bucket", || async {
        match js.get_key_value(BUCKET).await {
            Ok(kv) => Ok(kv),
            Err(_) => {
                js.create_key_value(kv::Config {
                    bucket: BUCKET.into(),
                    history: 1,
                    max_age: ttl,
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
            }
        }
    })
    .await
    .map_err(anyhow::Error::msg)
}

pub struct Lease {
    kv: kv::Store,
    market: String,
    owner: Bytes,
    revision: u64,
}

impl Lease {
    /// Wait until this engine holds the market's lease.
    pub async fn acquire(kv: kv::Store, market: &str, owner: &str) -> anyhow::Result<Lease> {
        let value = Bytes::from(owner.to_string());
        let mut told = false;
        loop {
            let entry = kv.entry(market).await.context("reading the market lease")?;
            let attempt = match entry {
                Some(e) if e.operation == Operation::Put && e.value == value => kv.update(market, value.clone(), e.revision).await.ok(),
                Some(e) if e.operation == Operation::Put => {
                    if !told {
                        info!(market, holder = %String::from_utf8_lossy(&e.value), "market is held by another engine; waiting for its lease to lapse");
                        told = true;
                    }
                    None
                }
                _ => kv.create(market, value.clone()).await.ok(),
            };
            if let Some(revision) = attempt {
                info!(market, engine = owner, "market lease acquired");
                return Ok(Lease { kv, market: market.to_string(), owner: value, revision });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Extend the lease; an error means another engine may own the market now.
    pub async fn renew(&mut self) -> anyhow::Result<()> {
        self.revision = self
            .kv
            .update(&self.market, self.owner.clone(), self.revision)
            .await
            .with_context(|| format!("lost the lease on market {}", self.market))?;
        Ok(())
    }
}
