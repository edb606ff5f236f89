//! The one place that names NATS subjects, streams, consumers and buckets, and defines the
//! messages that travel on them. Services and the engine import names from here; no other
//! crate spells a subject.
//!
//! Naming: dotted, scope first, verb last (`market.<market>.cmd`).

pub mod subjects {
    /// Order commands for one market (API/outbox → engine).
    pub fn market_cmd(market: &str) -> String {
        format!("market.{market}.cmd")
    }
    /// Sequenced events for one market (engine → settlement, market data).
    pub fn market_evt(market: &str) -> String {
        format!("market.{market}.evt")
    }
    /// Request/reply: the L2 snapshot of one market with the sequence it reflects.
    pub fn market_snapshot(market: &str) -> String {
        format!("api.market.{market}.snapshot")
    }
    /// Assignments for one provider node.
    pub fn node_assign(node: &str) -> String {
        format!("node.{node}.assign")
    }
    /// Heartbeats from one provider node.
    pub fn node_heartbeat(node: &str) -> String {
        format!("node.{node}.heartbeat")
    }
    /// Request/reply: candles and 24 h figures of one market.
    pub fn market_stats(market: &str) -> String {
        format!("api.market.{market}.stats")
    }
    /// Results published by one provider node (its id in the subject is who sent it: only that
    /// node may publish here, see [`crate::access::node`]).
    pub fn node_result(node: &str) -> String {
        format!("node.{node}.result")
    }
    /// The prefix of one node's reply inboxes (`ConnectOptions::custom_inbox_prefix`), inside
    /// the node's own `node.<id>.>` so a node subscribes to nothing else.
    pub fn node_inbox_prefix(node: &str) -> String {
        format!("node.{node}.inbox")
    }
    /// The node id in a `node.<id>.<verb>` subject.
    pub fn node_of(subject: &str) -> Option<uuid::Uuid> {
        let mut parts = subject.split('.');
        match (parts.next(), parts.next()) {
            (Some("node"), Some(id)) => id.parse().ok(),
            _ => None,
        }
    }
    /// Cancellation of assignments on one provider node ([`crate::node::CancelMsg`]).
    pub fn node_cancel(node: &str) -> String {
        format!("node.{node}.cancel")
    }
    pub const ALL_MARKET_CMDS: &str = "market.*.cmd";
    pub const ALL_NODE_RESULTS: &str = "node.*.result";
    pub const ALL_NODE_HEARTBEATS: &str = "node.*.heartbeat";
    pub const ALL_MARKET_EVTS: &str = "market.*.evt";
    pub const ALL_NODE_ASSIGNS: &str = "node.*.assign";
}

pub mod streams {
    use std::future::Future;
    use std::time::{Duration, Instant};

    use async_nats::jetstream::{self, context::CreateObjectStoreError, object_store, stream};

    /// JetStream drops a resent `Nats-Msg-Id` within this window.
    pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
    /// How long streams keep messages unless configured otherwise.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

    /// The replica count on a single nats-server: every service's `nats_replicas` setting
    /// defaults to it. A three-node cluster runs every stream, bucket and object store with 3
    /// (`cargo xtask run --cluster`); all services of one market must be configured alike, or
    /// the streams they bring to [`config`] change replica counts back and forth.
    pub const DEFAULT_REPLICAS: usize = 1;

    /// How long a service retries setting up a stream or bucket while JetStream cannot answer
    /// yet (a cluster electing a leader after a server started or died, or placing a new
    /// stream's replicas while one of its servers is down) before it gives up.
    pub const SETUP_PATIENCE: Duration = Duration::from_secs(30);

    /// Whether a JetStream set-up error may pass by itself: a timeout, JetStream temporarily
    /// unavailable (no meta leader), no responders, or too few servers for the replicas (one
    /// is down). Anything else (a refused configuration) fails at once.
    pub fn transient(error: &str) -> bool {
        let e = error.to_lowercase();
        ["timed out", "timeout", "temporarily unavailable", "no responders", "insufficient resources", "no suitable peers"]
            .iter()
            .any(|t| e.contains(t))
    }

    /// Runs the set-up request `attempt` until it succeeds, retrying [`transient`] errors with
    /// a growing pause (100 ms doubling to 2 s) for up to [`SETUP_PATIENCE`]; the error names
    /// `what`. Every set-up request of Gridbook is idempotent, so a retry after a timeout whose
    /// request did land is harmless.
    pub async fn patiently<T, E, F, Fut>(what: &str, mut attempt: F) -> Result<T, String>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let e = e.to_string();
                    if !transient(&e) || started.elapsed() + pause > SETUP_PATIENCE {
                        return Err(format!("{what}: {e} (after {:.1} s)", started.elapsed().as_secs_f64()));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// The one configuration of every Gridbook stream: file storage, limits retention, the
    /// duplicate window above, `replicas` copies (at least 1; at most the cluster's size, or
    /// JetStream refuses the stream).
    pub fn config(name: &str, subject: &str, max_age: Duration, replicas: usize) -> stream::Config {
        stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: replicas.max(1),
            ..Default::default()
        }
    }

    /// Brings the replica count of the existing stream `name` to `replicas` (idempotent; a
    /// no-op when it already has it). For the streams behind a key-value bucket (`KV_<bucket>`)
    /// or an object store (`OBJ_<bucket>`), which `create_*` makes only when missing: one made
    /// on a single server keeps its one replica until this raises it (JetStream moves R1 → R3
    /// on a cluster in place, copying the data to the new peers).
    pub async fn ensure_replicas(js: &jetstream::Context, name: &str, replicas: usize) -> Result<(), String> {
        let replicas = replicas.max(1);
        let stream = patiently(&format!("stream {name}"), || js.get_stream(name)).await?;
        let info = patiently(&format!("stream {name}"), || stream.get_info()).await?;
        if info.config.num_replicas.max(1) == replicas {
            return Ok(());
        }
        let config = stream::Config { num_replicas: replicas, ..info.config };
        patiently(&format!("stream {name}: setting {replicas} replicas"), || js.update_stream(config.clone())).await?;
        Ok(())
    }

    /// Order commands, all markets; limits retention so a snapshot + replay can re-read them.
    pub const COMMANDS: &str = "GRIDBOOK_COMMANDS";
    /// Engine events, all markets; kept for replay and audits.
    pub const EVENTS: &str = "GRIDBOOK_EVENTS";
    /// Assignments to provider nodes (`node.*.assign`), published from the ledger's outbox.
    pub const ASSIGNMENTS: &str = "GRIDBOOK_ASSIGNMENTS";
    /// Results of assignments (`node.*.result`), published by executors, consumed by the
    /// settlement worker's verifier.
    pub const RESULTS: &str = "GRIDBOOK_RESULTS";
    /// Object store holding the engine's latest snapshot per market.
    pub const SNAPSHOTS_BUCKET: &str = "gridbook_snapshots";
    /// Object store bucket for job input and output files, keyed by sha256.
    pub const FILES_BUCKET: &str = "gridbook_files";

    /// The one configuration of the [`FILES_BUCKET`] object store: file storage, no age limit
    /// (jobs' inputs and outputs stay until deleted).
    pub fn files_bucket_config(replicas: usize) -> object_store::Config {
        object_store::Config {
            bucket: FILES_BUCKET.into(),
            description: Some("Gridbook job input and output files, named by sha256".into()),
            storage: stream::StorageType::File,
            num_replicas: replicas.max(1),
            ..Default::default()
        }
    }

    /// The streams provider nodes read and write — [`ASSIGNMENTS`] (`node.*.assign`) and
    /// [`RESULTS`] (`node.*.result`) — created or brought to [`config`] (idempotent). The API
    /// and the settlement worker both call it: nodes cannot create streams.
    pub async fn ensure_node_streams(js: &jetstream::Context, replicas: usize) -> Result<(), String> {
        for (name, subject) in [
            (ASSIGNMENTS, crate::subjects::ALL_NODE_ASSIGNS),
            (RESULTS, crate::subjects::ALL_NODE_RESULTS),
        ] {
            patiently(&format!("stream {name}"), || {
                js.create_or_update_stream(config(name, subject, DEFAULT_MAX_AGE, replicas))
            })
            .await?;
        }
        Ok(())
    }

    /// The [`FILES_BUCKET`] object store, created with [`files_bucket_config`] when missing
    /// (idempotent; every service that reads or writes files calls it). An existing bucket is
    /// used as it is: services bring its replica count up once at start ([`ensure_replicas`]
    /// on `OBJ_gridbook_files`).
    pub async fn ensure_files_bucket(
        js: &jetstream::Context,
        replicas: usize,
    ) -> Result<object_store::ObjectStore, CreateObjectStoreError> {
        match js.get_object_store(FILES_BUCKET).await {
            Ok(store) => Ok(store),
            Err(_) => js.create_object_store(files_bucket_config(replicas)).await,
        }
    }

    /// What a service does once at start: [`ensure_files_bucket`], then [`ensure_replicas`] on
    /// its stream (a bucket made on a single server gets `replicas`), both [`patiently`].
    pub async fn set_up_files_bucket(
        js: &jetstream::Context,
        replicas: usize,
    ) -> Result<object_store::ObjectStore, String> {
        let store = patiently(&format!("bucket {FILES_BUCKET}"), || ensure_files_bucket(js, replicas)).await?;
        ensure_replicas(js, &object_store_stream(FILES_BUCKET), replicas).await?;
        Ok(store)
    }

    /// The stream behind the object store `bucket` (JetStream's naming).
    pub fn object_store_stream(bucket: &str) -> String {
        format!("OBJ_{bucket}")
    }

    /// The stream behind the key-value bucket `bucket` (JetStream's naming).
    pub fn kv_stream(bucket: &str) -> String {
        format!("KV_{bucket}")
    }
}

/// NATS header names Gridbook sets.
pub mod headers {
    /// Deduplication id JetStream honours within the stream's duplicate window.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// On an event frame: the sequence of its last event (for cheap recovery look-ups).
    pub const LAST_SEQ: &str = "Gridbook-Last-Seq";
}

/// What a provider node may do on NATS: the one statement of a node's permissions, which the
/// API's auth callout grants to a node's connection (everything else is denied by the server).
pub mod access {
    use crate::{streams, subjects};

    /// The subjects a node may publish to and subscribe to.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct NodePermissions {
        pub publish: Vec<String>,
        pub subscribe: Vec<String>,
    }

    /// Node `node` may publish its own results and heartbeats, pull from and acknowledge its
    /// own assignment consumer (which the API creates; a node cannot create, change or delete
    /// consumers or streams), and subscribe only below `node.<id>.` (cancellations, its reply
    /// inboxes). It cannot read market events, publish commands, touch an object store or
    /// key-value bucket, or use another node's subjects.
    pub fn node(node: &str) -> NodePermissions {
        let consumer = crate::consumers::node(node);
        NodePermissions {
            publish: vec![
                subjects::node_result(node),
                subjects::node_heartbeat(node),
                format!("$JS.API.CONSUMER.MSG.NEXT.{}.{consumer}", streams::ASSIGNMENTS),
                format!("$JS.API.CONSUMER.INFO.{}.{consumer}", streams::ASSIGNMENTS),
                format!("$JS.ACK.{}.{consumer}.>", streams::ASSIGNMENTS),
            ],
            subscribe: vec![format!("node.{node}.>")],
        }
    }
}

/// Durable consumer names.
pub mod consumers {
    /// The durable pull consumer of one node on `GRIDBOOK_ASSIGNMENTS` (filter
    /// `node.<id>.assign`), created by the API when the node registers.
    pub fn node(node: &str) -> String {
        format!("node-{node}")
    }
}

/// Connecting to NATS as one of the market's own services.
pub mod connect {
    use std::path::Path;

    /// The servers of a `nats_url` setting: one URL, or a cluster's URLs separated by commas
    /// (`nats://10.0.0.1:4222,nats://10.0.0.2:4222,…`). async-nats parses a `&str` as ONE URL,
    /// so every service connects through this. The client starts at a random one of them, and
    /// after losing its server reconnects to any of them (and to the servers the cluster
    /// announces), without limit.
    pub fn servers(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
        let list: Vec<_> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| u.parse::<async_nats::ServerAddr>().map_err(|e| format!("NATS server URL {u:?}: {e}")))
            .collect::<Result<_, _>>()?;
        if list.is_empty() {
            return Err(format!("no NATS server URL in {urls:?}"));
        }
        Ok(list)
    }

    /// Options for a market service: its name, and its nkey seed from `nkey_file` when given
    /// (the server of `cargo xtask` and the testkit requires one; see `gridbook-natsauth`).
    pub fn service_options(
        name: &str,
        nkey_file: Option<&Path>,
    ) -> Result<async_nats::ConnectOptions, String> {
        let opts = match nkey_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading the NATS nkey seed {}: {e}", path.display()))?;
                let seed = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
                if !seed.starts_with('S') {
                    return Err(format!("{} does not hold an nkey seed", path.display()));
                }
                async_nats::ConnectOptions::with_nkey(seed.to_owned())
            }
            None => async_nats::ConnectOptions::new(),
        };
        Ok(opts.name(name))
    }
}

/// Messages on `market.<market>.*`.
pub mod market {
    use matching_core::{Event, Level, Price, Qty};
    use serde::{Deserialize, Serialize};

    /// What a client publishes on `market.<market>.cmd`: one command, or a JSON array of at
    /// most [`MAX_COMMANDS_PER_MESSAGE`] commands (one JetStream write, and so one fsync, for
    /// many commands). Commands carry no `seq` or `time`: the engine numbers them per market in
    /// stream order and takes the time from the JetStream timestamp (ms). Set `Nats-Msg-Id` to
    /// a unique id per message; the engine also drops a place whose order id it has seen.
    pub type CommandMsg = matching_core::CommandKind;

    /// The most commands one message on `market.<market>.cmd` may carry.
    pub const MAX_COMMANDS_PER_MESSAGE: usize = 4_096;

    /// All events of one command. The engine publishes frames on `market.<market>.evt` as a
    /// JSON array ([`EventMessage`]) per message, with `Nats-Msg-Id = <market>.<first event
    /// seq>` and header `Gridbook-Last-Seq`. Event sequences are gapless per market: a frame's
    /// `first` is the previous frame's `last + 1`, which is how a client detects a gap.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct EventFrame {
        pub market: String,
        /// JetStream sequence of the message that carried the command.
        pub stream_seq: u64,
        /// The command's number in this market (the `cmd` of its events).
        pub cmd: u64,
        /// Command time, milliseconds since the Unix epoch.
        pub time: u64,
        pub first: u64,
        pub last: u64,
        pub events: Vec<Event>,
        /// Best bid and offer after the command.
        pub best_bid: Option<Price>,
        pub best_ask: Option<Price>,
    }

    /// One message on `market.<market>.evt`: consecutive frames, oldest first.
    pub type EventMessage = Vec<EventFrame>;

    /// Reply to `api.market.<market>.snapshot`: the L2 book after event `seq`. Apply frames with
    /// `first > seq` on top of it.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct L2Snapshot {
        pub market: String,
        pub seq: u64,
        /// Best first.
        pub bids: Vec<Level>,
        /// Best first.
        pub asks: Vec<Level>,
    }

    /// One minute of trades. Prices in ticks, volume in lots.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Candle {
        /// Start of the minute, ms since the Unix epoch.
        pub start: u64,
        pub open: Price,
        pub high: Price,
        pub low: Price,
        pub close: Price,
        pub volume: Qty,
        pub trades: u64,
    }

    /// Reply to `api.market.<market>.stats`: the last 24 h as of event `seq`.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MarketStats {
        pub market: String,
        pub seq: u64,
        pub last_price: Option<Price>,
        pub volume_24h: Qty,
        pub trades_24h: u64,
        pub high_24h: Option<Price>,
        pub low_24h: Option<Price>,
        /// Oldest first, at most 1,440.
        pub candles: Vec<Candle>,
    }
}

/// What travels between the market and provider nodes: assignments (`node.<id>.assign`,
/// stream `GRIDBOOK_ASSIGNMENTS`), cancellations (`node.<id>.cancel`, core NATS), heartbeats
/// (`node.<id>.heartbeat`, core NATS) and results (`job.<job>.result`, stream
/// `GRIDBOOK_RESULTS`). Inputs and outputs are objects in the `gridbook_files` bucket named by
/// their sha256 (hex).
pub mod node {
    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    /// The work of one assignment: lines `[item_start, item_start + item_count)` (0-based) of
    /// the job's input JSONL file, object `input_sha256`.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct WorkSpec {
        pub input_sha256: String,
        pub item_start: u64,
        pub item_count: u64,
        /// Units `[unit_start, unit_start + qty)` of the job.
        pub unit_start: u64,
        /// The result must arrive before this time (ms since the Unix epoch), or the
        /// assignment is voided and the studio refunded.
        pub deadline_ms: u64,
        /// The studio's private model to run instead of the market's: fetched (sealed) and its
        /// key released through the assignment's grant; the node must load exactly `sha256`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub model: Option<ModelRef>,
    }

    /// A private model an assignment runs.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ModelRef {
        pub id: Uuid,
        /// sha256 (hex) of the plaintext `.onnx` file, pinned in the job.
        pub sha256: String,
    }

    /// The message on `node.<node_id>.assign` (published from the ledger's outbox,
    /// `Nats-Msg-Id` = outbox id, so the node may see it again after a crash: dedupe by
    /// `assignment_id`).
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct AssignmentMsg {
        /// = the escrow assignment id; complete/void it with this id.
        pub assignment_id: Uuid,
        pub market: String,
        /// The engine event that created it.
        pub event_seq: u64,
        pub job_id: Option<Uuid>,
        pub node_id: Uuid,
        /// The bid's escrow order id.
        pub order_id: Uuid,
        /// Lots (= units of work).
        pub qty: u64,
        /// Trade price in ticks (= minor units per unit).
        pub price: u64,
        pub bid_engine_order_id: u64,
        pub ask_engine_order_id: u64,
        /// What to run; absent for a bid that belongs to no job (nothing to run: report it
        /// completed with no items).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub work: Option<WorkSpec>,
    }

    /// The message on `node.<node_id>.cancel`: stop these assignments (the job was cancelled
    /// or the deadline passed). The node stops the run and reports nothing for them.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct CancelMsg {
        pub assignment_ids: Vec<Uuid>,
        pub reason: String,
    }

    /// The message on `node.<node_id>.heartbeat`, every few seconds while the agent runs. It
    /// names no node: the subject does, and only that node may publish on it.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct HeartbeatMsg {
        /// ms since the Unix epoch, node clock.
        pub time_ms: u64,
        /// Assignments running now.
        pub running: Vec<Uuid>,
        /// `cpu` or `cuda:<id>`.
        pub device: String,
        pub version: String,
    }

    /// How an assignment ended on the node.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case", tag = "status")]
    pub enum Outcome {
        /// Every item of the range produced an output or a per-item error line.
        Completed {
            /// The sha256 (hex) of the output the node uploaded for this assignment
            /// (`PUT /v1/assignments/{id}/output`; the API stores it in `gridbook_files` under
            /// this name and records it on the assignment): JSONL, one line per item, the
            /// executor's local-mode output format (`custom_id` + `embedding` or
            /// `image_png_b64` or `error`).
            output_sha256: String,
            /// Merkle root (hex) over the items' leaves, as `executor`'s `Commitment` builds it.
            merkle_root: String,
            items_ok: u64,
            items_failed: u64,
        },
        /// The node could not run it (model missing, out of memory, input unreadable).
        Failed { reason: String },
    }

    /// The message on `node.<node_id>.result` (stream `GRIDBOOK_RESULTS`, `Nats-Msg-Id` =
    /// `result.<assignment_id>`). It names no node: the subject does, and only that node may
    /// publish on it.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct ResultMsg {
        pub assignment_id: Uuid,
        pub job_id: Uuid,
        #[serde(flatten)]
        pub outcome: Outcome,
        /// The executor's manifest (model hash, ORT version, execution provider, dtype, GPU).
        pub manifest: serde_json::Value,
        pub elapsed_ms: u64,
    }
}

/// The kinds of work Gridbook's markets trade, by market symbol: which executor workload runs a
/// market's units and how many input lines one unit covers (product.md, "Markets and units"),
/// and which input lines are the items of a unit or an assignment.
///
/// Items: item `n` (0-based) of a job is the `n`-th non-blank line of its input file ([`items`]);
/// unit `u` covers items `[u × items_per_unit, (u + 1) × items_per_unit)`, the last unit clipped
/// to the job's items ([`items_of_units`]). The API refuses blank lines, so item `n` is also line
/// `n + 1` of a stored file.
pub mod catalog {
    use std::ops::Range;

    use serde::{Deserialize, Serialize};

    /// The executor workload that runs a market's units (`executor run --workload <name>`). On the
    /// wire (JSON, configuration, the CLI) it is its [`as_str`](Self::as_str) name.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum WorkloadKind {
        /// Sentence embeddings (`EMBED-MINILM-L6`).
        Embed,
        /// Terrain heightfield renders (`RENDER-TERRAIN-128`).
        Terrain,
        /// Text-to-image renders (`RENDER-SD15-512`).
        Sd,
    }

    impl WorkloadKind {
        /// Every kind, in declaration order.
        pub const ALL: [WorkloadKind; 3] =
            [WorkloadKind::Embed, WorkloadKind::Terrain, WorkloadKind::Sd];

        /// The kind's name: `embed`, `terrain` or `sd` (the same as its serde form).
        pub const fn as_str(self) -> &'static str {
            match self {
                WorkloadKind::Embed => "embed",
                WorkloadKind::Terrain => "terrain",
                WorkloadKind::Sd => "sd",
            }
        }
    }

    impl std::fmt::Display for WorkloadKind {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.as_str())
        }
    }

    /// A name that is no [`WorkloadKind`].
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct UnknownWorkload(pub String);

    impl std::fmt::Display for UnknownWorkload {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "unknown workload {:?}: expected one of ", self.0)?;
            for (i, k) in WorkloadKind::ALL.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                f.write_str(k.as_str())?;
            }
            Ok(())
        }
    }

    impl std::error::Error for UnknownWorkload {}

    impl std::str::FromStr for WorkloadKind {
        type Err = UnknownWorkload;

        fn from_str(s: &str) -> Result<Self, UnknownWorkload> {
            WorkloadKind::ALL
                .into_iter()
                .find(|k| k.as_str() == s)
                .ok_or_else(|| UnknownWorkload(s.to_owned()))
        }
    }

    /// One market's work.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Work {
        /// The executor workload that runs the market's units.
        pub kind: WorkloadKind,
        /// Input lines (JSONL items) per unit of the market.
        pub items_per_unit: u32,
    }

    /// A spot market of a ledger token against credits: nothing to run, both sides escrowed
    /// on the ledger and settled delivery-versus-payment (`settlement::token`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct TokenPair {
        /// The ledger of what is bought and sold (`GRID`).
        pub base_ledger: &'static str,
        /// The ledger it is paid in (`USD`: credits).
        pub quote_ledger: &'static str,
        /// Base ledger units in one lot (one whole token: 10^decimals).
        pub base_units_per_lot: i64,
        /// The fee the ledger charges the buyer, in bps of the notional (as on job bids). The
        /// engine's `fee_bps` for the market must be the same (the API refuses to start
        /// otherwise); the settlement worker, which reads no market file, takes it from here.
        pub fee_bps: u32,
    }

    /// What a market trades. Every place that needs a market's workload matches on this, so a
    /// token market is handled explicitly (it has no workload, nodes, verification or canaries).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum MarketKind {
        /// Units of work run by provider nodes.
        Compute(Work),
        /// A token traded for credits.
        Token(TokenPair),
    }

    impl MarketKind {
        /// `compute` or `token` (the API's `kind` field).
        pub const fn as_str(self) -> &'static str {
            match self {
                MarketKind::Compute(_) => "compute",
                MarketKind::Token(_) => "token",
            }
        }

        /// The work of a compute market; `None` for a token market.
        pub const fn work(self) -> Option<Work> {
            match self {
                MarketKind::Compute(w) => Some(w),
                MarketKind::Token(_) => None,
            }
        }
    }

    /// The GRID/credits market: price = credits' minor units per whole GRID, 1 lot = 1 GRID.
    pub const GRID_CREDITS: &str = "GRID-CREDITS";

    /// GRID against credits: `GRID` base units (10^6 per GRID) for `USD` minor units.
    pub const GRID_PAIR: TokenPair = TokenPair {
        base_ledger: "GRID",
        quote_ledger: "USD",
        base_units_per_lot: 1_000_000,
        fee_bps: 250,
    };

    pub const MARKETS: &[(&str, MarketKind)] = &[
        (
            "EMBED-MINILM-L6",
            MarketKind::Compute(Work {
                kind: WorkloadKind::Embed,
                items_per_unit: 1_000,
            }),
        ),
        (
            "RENDER-TERRAIN-128",
            MarketKind::Compute(Work {
                kind: WorkloadKind::Terrain,
                items_per_unit: 1,
            }),
        ),
        (
            "RENDER-SD15-512",
            MarketKind::Compute(Work {
                kind: WorkloadKind::Sd,
                items_per_unit: 1,
            }),
        ),
        (GRID_CREDITS, MarketKind::Token(GRID_PAIR)),
    ];

    /// What `market` trades, if Gridbook knows it.
    pub fn kind(market: &str) -> Option<MarketKind> {
        MARKETS.iter().find(|(m, _)| *m == market).map(|(_, k)| *k)
    }

    /// The work of `market`, if it is a compute market Gridbook knows how to run (`None` for a
    /// token market and for an unknown one: use [`kind`] to tell them apart).
    pub fn work(market: &str) -> Option<Work> {
        kind(market).and_then(MarketKind::work)
    }

    /// The token pair of `market`, if it is a token market.
    pub fn token(market: &str) -> Option<TokenPair> {
        match kind(market)? {
            MarketKind::Token(t) => Some(t),
            MarketKind::Compute(_) => None,
        }
    }

    /// Units needed for `items` input lines (rounded up).
    pub fn units_for(work: Work, items: u64) -> u64 {
        items.div_ceil(u64::from(work.items_per_unit))
    }

    /// The items units `[unit_start, unit_start + units)` cover in a job of `job_items` items
    /// whose unit is `items_per_unit` items: `[unit_start × items_per_unit, (unit_start + units)
    /// × items_per_unit)` clipped to `job_items`. `None` when that is empty (no units, or units
    /// past the job's items) or overflows.
    pub fn items_of_units(
        items_per_unit: u64,
        unit_start: u64,
        units: u64,
        job_items: u64,
    ) -> Option<Range<u64>> {
        if units == 0 {
            return None;
        }
        let start = unit_start.checked_mul(items_per_unit)?;
        if start >= job_items {
            return None;
        }
        let end = unit_start
            .checked_add(units)?
            .checked_mul(items_per_unit)?
            .min(job_items);
        Some(start..end)
    }

    /// The custom_id a node is served for the line at `position` (0-based) of its assignment's
    /// input: the position, never the studio's id. Every line of an assignment — the job's items
    /// and the market's canaries mixed in among them — is named the same way, so nothing in an
    /// id tells a canary apart; the settlement worker maps positions back to the studio's ids.
    pub fn served_id(position: u64) -> String {
        format!("i{position}")
    }

    /// The position a served custom_id names ([`served_id`]'s inverse).
    pub fn served_position(id: &str) -> Option<u64> {
        let digits = id.strip_prefix('i')?;
        if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
            return None;
        }
        digits.parse().ok()
    }

    /// Where one canary (an item with a known answer, `canary_items`) sits among the lines an
    /// assignment's node is served (`job_assignments.canaries`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct CanarySlot {
        /// 0-based position among the served lines.
        pub at: u64,
        pub id: uuid::Uuid,
    }

    /// What the served line at one position is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum ServedLine {
        /// The assignment's `i`-th item (0-based, from its `item_start`).
        Item(u64),
        /// The `c`-th canary of the assignment's slots.
        Canary(usize),
    }

    /// The lines an assignment of `items` items with canaries `slots` is served, in order:
    /// `items + slots.len()` of them, each canary at its position, the items in input order
    /// around them. `Err` when the slots are not ascending, distinct and inside the lines.
    pub fn served_lines(items: u64, slots: &[CanarySlot]) -> Result<Vec<ServedLine>, String> {
        let total = items
            .checked_add(slots.len() as u64)
            .ok_or_else(|| "too many lines".to_owned())?;
        for w in slots.windows(2) {
            if w[0].at >= w[1].at {
                return Err(format!("canary positions {} and {} are not ascending", w[0].at, w[1].at));
            }
        }
        if let Some(last) = slots.last()
            && last.at >= total
        {
            return Err(format!("a canary at {} is past the {total} served lines", last.at));
        }
        let mut out = Vec::with_capacity(usize::try_from(total).map_err(|_| "too many lines")?);
        let (mut item, mut next) = (0u64, 0usize);
        for p in 0..total {
            if slots.get(next).is_some_and(|s| s.at == p) {
                out.push(ServedLine::Canary(next));
                next += 1;
            } else {
                out.push(ServedLine::Item(item));
                item += 1;
            }
        }
        Ok(out)
    }

    /// Whether an input line is blank (only ASCII whitespace): blank lines are no items.
    pub fn is_blank(line: &[u8]) -> bool {
        line.iter().all(u8::is_ascii_whitespace)
    }

    /// A job's items in order: the non-blank lines of its input file, without their `\n` (and
    /// without a UTF-8 byte-order mark before the first, as the executor's parser reads it).
    pub fn items(input: &[u8]) -> impl Iterator<Item = &[u8]> {
        let input = input.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(input);
        input.split(|&b| b == b'\n').filter(|l| !is_blank(l))
    }

    /// Items `[start, start + count)` of a job's input file ([`items`]); `Err` when the file has
    /// fewer.
    pub fn select_items(input: &[u8], start: u64, count: u64) -> Result<Vec<&[u8]>, String> {
        let lines: Vec<&[u8]> = items(input)
            .skip(usize::try_from(start).unwrap_or(usize::MAX))
            .take(usize::try_from(count).unwrap_or(usize::MAX))
            .collect();
        if lines.len() as u64 != count {
            return Err(format!(
                "the input file has {} items from item {start}, the assignment needs {count}",
                lines.len()
            ));
        }
        Ok(lines)
    }
}

/// Validates a market symbol for use in a subject: upper-case letters, digits and `-`, at most
/// 64 characters (subjects must not contain `.`, `*`, `>` or whitespace).
pub fn valid_market_symbol(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    #[test]
    fn served_lines_put_each_canary_at_its_position_and_ids_round_trip() {
        use catalog::{CanarySlot, ServedLine::*, served_id, served_lines, served_position};
        let slot = |at| CanarySlot { at, id: uuid::Uuid::nil() };
        assert_eq!(served_lines(3, &[]).unwrap(), vec![Item(0), Item(1), Item(2)]);
        assert_eq!(
            served_lines(3, &[slot(0), slot(2), slot(4)]).unwrap(),
            vec![Canary(0), Item(0), Canary(1), Item(1), Canary(2), Item(2)]
        );
        assert_eq!(served_lines(1, &[slot(1)]).unwrap(), vec![Item(0), Canary(0)]);
        assert!(served_lines(1, &[slot(2)]).is_err(), "past the end");
        assert!(served_lines(3, &[slot(1), slot(1)]).is_err(), "repeated");
        assert!(served_lines(3, &[slot(2), slot(1)]).is_err(), "descending");
        for p in [0, 7, 1234] {
            assert_eq!(served_position(&served_id(p)), Some(p));
        }
        for bad in ["", "i", "7", "i07", "i-1", "ix", "c3"] {
            assert_eq!(served_position(bad), None, "{bad}");
        }
    }

    use super::*;

    #[test]
    fn subjects_scope_first_verb_last() {
        assert_eq!(subjects::market_cmd("EMBED-MINILM-L6"), "market.EMBED-MINILM-L6.cmd");
        assert_eq!(subjects::market_evt("X"), "market.X.evt");
        assert_eq!(subjects::node_assign("n1"), "node.n1.assign");
        assert_eq!(subjects::node_cancel("n1"), "node.n1.cancel");
        assert_eq!(subjects::node_result("n1"), "node.n1.result");
        assert_eq!(subjects::node_inbox_prefix("n1"), "node.n1.inbox");
        let id = uuid::Uuid::new_v4();
        assert_eq!(subjects::node_of(&subjects::node_result(&id.to_string())), Some(id));
        assert_eq!(subjects::node_of(&subjects::market_cmd("X")), None);
    }

    #[test]
    fn a_node_may_use_only_its_own_subjects() {
        let p = access::node("n1");
        assert_eq!(p.subscribe, vec!["node.n1.>".to_owned()]);
        for s in &p.publish {
            assert!(s.contains("n1"), "{s} names the node");
            assert!(!s.contains('*'), "{s}: no wildcard in a node's publish permission");
        }
        assert!(p.publish.iter().all(|s| !s.starts_with("market.") && !s.contains("$O.") && !s.contains("$KV.")));
    }

    #[test]
    fn workload_kinds_are_their_names_everywhere() {
        use catalog::WorkloadKind;
        for k in WorkloadKind::ALL {
            assert_eq!(k.as_str().parse::<WorkloadKind>(), Ok(k));
            assert_eq!(k.to_string(), k.as_str());
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(
                serde_json::from_value::<WorkloadKind>(k.as_str().into()).unwrap(),
                k
            );
        }
        let e = "render".parse::<WorkloadKind>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown workload \"render\": expected one of embed, terrain, sd"
        );
        assert!(serde_json::from_value::<WorkloadKind>("Embed".into()).is_err());
        for (market, k) in catalog::MARKETS {
            assert_eq!(catalog::kind(market), Some(*k));
            assert_eq!(catalog::work(market), k.work());
        }
        assert_eq!(catalog::work("NOPE"), None);
        assert_eq!(catalog::kind("NOPE"), None);
        // The token market has no workload, and says so by its kind.
        assert_eq!(catalog::work(catalog::GRID_CREDITS), None);
        assert_eq!(catalog::token(catalog::GRID_CREDITS), Some(catalog::GRID_PAIR));
        assert_eq!(catalog::kind(catalog::GRID_CREDITS).map(|k| k.as_str()), Some("token"));
        assert_eq!(catalog::token("EMBED-MINILM-L6"), None);
        assert!(valid_market_symbol(catalog::GRID_CREDITS));
    }

    #[test]
    fn units_cover_items_clipped_to_the_job() {
        use catalog::items_of_units;
        // 2,500 items of 1,000 per unit: units 0..3.
        assert_eq!(items_of_units(1_000, 0, 2, 2_500), Some(0..2_000));
        assert_eq!(items_of_units(1_000, 2, 1, 2_500), Some(2_000..2_500));
        assert_eq!(items_of_units(1_000, 2, 5, 2_500), Some(2_000..2_500));
        assert_eq!(items_of_units(1_000, 3, 1, 2_500), None, "past the items");
        assert_eq!(items_of_units(1_000, 0, 0, 2_500), None, "no units");
        assert_eq!(items_of_units(1, 4, 1, 5), Some(4..5));
        assert_eq!(items_of_units(u64::MAX, 2, 1, u64::MAX), None, "overflow");
        let w = catalog::work("EMBED-MINILM-L6").unwrap();
        assert_eq!(catalog::units_for(w, 2_500), 3);
        assert_eq!(catalog::units_for(w, 1_000), 1);
    }

    #[test]
    fn items_are_the_non_blank_lines() {
        let text = b"a\n\n b \nc\n \t\r\nd";
        let all: Vec<&[u8]> = catalog::items(text).collect();
        assert_eq!(all, [&b"a"[..], b" b ", b"c", b"d"]);
        // A UTF-8 byte-order mark before the first line is not part of the first item.
        let bom: Vec<&[u8]> = catalog::items(b"\xEF\xBB\xBF{}\n[]").collect();
        assert_eq!(bom, [&b"{}"[..], b"[]"]);
        assert_eq!(
            catalog::select_items(text, 1, 2).unwrap(),
            [&b" b "[..], b"c"]
        );
        assert_eq!(
            catalog::select_items(text, 4, 0).unwrap(),
            Vec::<&[u8]>::new()
        );
        assert!(
            catalog::select_items(text, 3, 2)
                .unwrap_err()
                .contains("has 1 items from item 3")
        );
        assert!(catalog::is_blank(b" \r"));
        assert!(!catalog::is_blank(b"{}"));
    }

    #[test]
    fn market_symbols_cannot_break_subjects() {
        assert!(valid_market_symbol("RENDER-SD15-512"));
        for bad in ["", "a.b", "A*", "A>", "A B", "lower", &"X".repeat(65)] {
            assert!(!valid_market_symbol(bad), "{bad:?}");
        }
    }
}
