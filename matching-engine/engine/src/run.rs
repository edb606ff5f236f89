//! `matching-engine run`: connect to NATS, make sure the streams exist, and run one single
//! writer task per configured market until Ctrl-C / SIGTERM.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, object_store, stream};
use gridbook_wire::{streams, subjects, valid_market_symbol};
use tracing::{error, info};

use crate::{
    market::{Nats, run_market},
    settings::EngineSettings,
};

/// Create or update the streams and buckets the engine needs (idempotent).
pub async fn connect(settings: &EngineSettings) -> anyhow::Result<Nats> {
    let client = gridbook_wire::connect::service_options(&settings.engine_id, settings.nats_nkey_file.as_deref())
        .map_err(anyhow::Error::msg)?
        .connect(gridbook_wire::connect::servers(&settings.nats_url).map_err(anyhow::Error::msg)?)
        .await
        .with_context(|| format!("connecting to NATS at {}", settings.nats_url))?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(settings.batch_max * 4)
        .backpressure_on_inflight(true)
        .build(client.clone());
    let max_age = Duration::from_secs(settings.retention_hours * 3600);
    for (name, subject) in [(streams::COMMANDS, subjects::ALL_MARKET_CMDS), (streams::EVENTS, subjects::ALL_MARKET_EVTS)] {
        streams::patiently(&format!("ensuring stream {name}"), || {
            js.create_or_update_stream(streams::config(name, subject, max_age, settings.nats_replicas))
        })
        .await
        .map_err(anyhow::Error::msg)?;
    }
    let snapshots = streams::patiently("the snapshot bucket", || async {
        match js.get_object_store(streams::SNAPSHOTS_BUCKET).await {
            Ok(s) => Ok(s),
            Err(_) => {
                js.create_object_store(object_store::Config {
                    bucket: streams::SNAPSHOTS_BUCKET.into(),
                    storage: stream::StorageType::File,
                    num_replicas: settings.nats_replicas.max(1),
                    ..Default::default()
                })
                .await
            }
        }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    let leases = crate::lease::bucket(&js, Duration::from_secs(settings.lease_secs), settings.nats_replicas).await?;
    // Buckets made before (on a single server, or with another setting) are brought to it.
    for name in [streams::object_store_stream(streams::SNAPSHOTS_BUCKET), streams::kv_stream(crate::lease::BUCKET)] {
        streams::ensure_replicas(&js, &name, settings.nats_replicas).await.map_err(anyhow::Error::msg)?;
    }
    Ok(Nats { client, js, snapshots, leases })
}

pub async fn run(settings: EngineSettings) -> anyhow::Result<()> {
    anyhow::ensure!(!settings.markets.is_empty(), "no markets configured (settings `markets`)");
    for m in &settings.markets {
        anyhow::ensure!(valid_market_symbol(&m.market.0), "market symbol {:?} is not valid in a subject", m.market.0);
        m.validate().with_context(|| format!("market {}", m.market.0))?;
    }
    let nats = connect(&settings).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for config in settings.markets.clone() {
        let (nats, settings) = (nats.clone(), settings.clone());
        tasks.spawn(async move {
            let market = config.market.0.clone();
            loop {
                // Recovery is the start path: an error restarts the market from its snapshot.
                if let Err(e) = run_market(nats.clone(), settings.clone(), config.clone()).await {
                    error!(market = %market, error = format!("{e:#}"), "market task failed; recovering");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
    }
    info!(engine = %settings.engine_id, markets = settings.markets.len(), "matching engine running");
    shutdown_signal().await;
    info!("shutting down");
    tasks.shutdown().await;
    nats.client.flush().await.ok();
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
