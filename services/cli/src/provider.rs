//! Providers: asks, nodes, earnings.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::output::{self, i, s};
use crate::{Ctx, PageArgs};

#[derive(Subcommand, Debug)]
pub enum AsksCommand {
    /// Your asks, newest first.
    List(PageArgs),
    /// Offer a node's capacity: QTY units at PRICE a unit.
    Place(PlaceArgs),
    /// Change an open ask's price and/or remaining quantity.
    Amend(AmendArgs),
    /// Take an ask off the book.
    Cancel {
        /// The ask.
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct PlaceArgs {
    /// The market, e.g. EMBED-MINILM-L6.
    #[arg(long)]
    market: String,
    /// Minor units per unit, within the market's price band.
    #[arg(long)]
    price: i64,
    /// Units offered.
    #[arg(long)]
    qty: i64,
    /// The node that runs the work [default: your only node].
    #[arg(long)]
    node: Option<String>,
    /// Never take: an ask that would cross a bid is rejected and closes
    /// (`close_reason: post_only_would_cross`).
    #[arg(long)]
    post_only: bool,
    /// Self-trade prevention against your own bids [default: the market's].
    #[arg(long, value_enum, value_name = "MODE")]
    stp: Option<Stp>,
}

/// A self-trade-prevention mode (`stp` in `POST /v1/asks`); the names are the engine's.
#[allow(clippy::enum_variant_names)]
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stp {
    #[value(name = "cancel_newest", alias = "cancel-newest")]
    CancelNewest,
    #[value(name = "cancel_oldest", alias = "cancel-oldest")]
    CancelOldest,
    #[value(name = "cancel_both", alias = "cancel-both")]
    CancelBoth,
}

impl Stp {
    fn as_str(self) -> &'static str {
        match self {
            Stp::CancelNewest => "cancel_newest",
            Stp::CancelOldest => "cancel_oldest",
            Stp::CancelBoth => "cancel_both",
        }
    }
}

#[derive(Args, Debug)]
pub struct AmendArgs {
    /// The ask.
    id: String,
    #[arg(long)]
    price: Option<i64>,
    /// The new remaining quantity.
    #[arg(long)]
    qty: Option<i64>,
}

#[derive(Subcommand, Debug)]
pub enum NodesCommand {
    /// Your nodes: status, challenge, reputation, last heartbeat.
    List(PageArgs),
}

fn ask_rows(asks: &[Value]) -> Vec<Vec<String>> {
    asks.iter()
        .map(|a| {
            vec![
                s(&a["id"]),
                s(&a["market"]),
                s(&a["price"]),
                s(&a["qty"]),
                s(&a["status"]),
                s(&a["node_id"]),
            ]
        })
        .collect()
}

const ASK_HEADER: [&str; 6] = ["ASK", "MARKET", "PRICE", "QTY", "STATUS", "NODE"];

fn show_ask(ctx: &Ctx, what: &str, a: &Value) {
    if ctx.json {
        output::print_json(a);
    } else {
        println!(
            "{what} ask {}: {} units at {} on {} ({}{}{})",
            s(&a["id"]),
            s(&a["qty"]),
            s(&a["price"]),
            s(&a["market"]),
            s(&a["status"]),
            if a["post_only"] == true { ", post-only" } else { "" },
            a["close_reason"].as_str().map(|r| format!(", {r}")).unwrap_or_default()
        );
    }
}

fn path_id(id: &str) -> String {
    output::encode(id.trim())
}

pub async fn asks(ctx: &Ctx, cmd: AsksCommand) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        AsksCommand::List(page) => {
            let list = c.get(&format!("/v1/asks{}", page.query())).await?;
            if ctx.json {
                output::print_json(&list);
                return Ok(());
            }
            let rows = ask_rows(
                list["data"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
            );
            if rows.is_empty() {
                println!("no asks");
            } else {
                output::table(&ASK_HEADER, &rows);
            }
            if !list["next_before"].is_null() {
                println!(
                    "more: gridbook asks list --before {}",
                    s(&list["next_before"])
                );
            }
        }
        AsksCommand::Place(a) => {
            let node = match a.node {
                Some(n) => n,
                None => only_node(ctx).await?,
            };
            let node: uuid::Uuid = node
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("--node {node:?} is not a node id (field node_id)"))?;
            let mut body = json!({"node_id": node, "market": a.market, "price": a.price, "qty": a.qty,
                                  "post_only": a.post_only});
            if let Some(m) = a.stp {
                body["stp"] = json!(m.as_str());
            }
            let ask = c.post("/v1/asks", &body).await?;
            show_ask(ctx, "placed", &ask);
        }
        AsksCommand::Amend(a) => {
            if a.price.is_none() && a.qty.is_none() {
                bail!("give --price and/or --qty");
            }
            let mut body = Map::new();
            if let Some(p) = a.price {
                body.insert("price".into(), p.into());
            }
            if let Some(q) = a.qty {
                body.insert("qty".into(), q.into());
            }
            let ask = c
                .send_json(
                    Method::PATCH,
                    &format!("/v1/asks/{}", path_id(&a.id)),
                    Some(&Value::Object(body)),
                    None,
                )
                .await?;
            show_ask(ctx, "amended", &ask);
        }
        AsksCommand::Cancel { id } => {
            let ask = c
                .send_json(
                    Method::DELETE,
                    &format!("/v1/asks/{}", path_id(&id)),
                    None,
                    None,
                )
                .await?;
            show_ask(ctx, "cancelling", &ask);
        }
    }
    Ok(())
}

/// The caller's node when there is exactly one.
async fn only_node(ctx: &Ctx) -> anyhow::Result<String> {
    let list = ctx.client.get("/v1/nodes?limit=2").await?;
    let nodes = list["data"]
        .as_array()
        .context("the API's node list has no data")?;
    match nodes.as_slice() {
        [n] => Ok(s(&n["id"])),
        [] => bail!(
            "you have no node: start the executor agent first (see the README's Provider section)"
        ),
        _ => bail!("you have several nodes: pass --node ID (see `gridbook nodes list`)"),
    }
}

pub async fn nodes(ctx: &Ctx, cmd: NodesCommand) -> anyhow::Result<()> {
    let NodesCommand::List(page) = cmd;
    let list = ctx
        .client
        .get(&format!("/v1/nodes{}", page.query()))
        .await?;
    if ctx.json {
        output::print_json(&list);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            vec![
                s(&n["id"]),
                s(&n["name"]),
                format!("{} ({} MB)", s(&n["gpu_model"]), s(&n["vram_mb"])),
                s(&n["region"]),
                s(&n["status"]),
                // `passed (fits)`, `passed (too_slow)`: the market's timing verdict, when given.
                match n["challenge_timing"].as_str() {
                    Some(t) => format!("{} ({t})", s(&n["challenge_status"])),
                    None => s(&n["challenge_status"]),
                },
                output::bps(i(&n["reputation"])),
                if n["last_heartbeat_at"].is_null() {
                    "never".into()
                } else {
                    output::relative(&n["last_heartbeat_at"])
                },
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no nodes");
    } else {
        output::table(
            &[
                "NODE",
                "NAME",
                "GPU",
                "REGION",
                "STATUS",
                "CHALLENGE",
                "REPUTATION",
                "HEARTBEAT",
            ],
            &rows,
        );
    }
    if !list["next_before"].is_null() {
        println!(
            "more: gridbook nodes list --before {}",
            s(&list["next_before"])
        );
    }
    Ok(())
}

pub async fn earnings(ctx: &Ctx) -> anyhow::Result<()> {
    let e = ctx.client.get("/v1/earnings").await?;
    if ctx.json {
        output::print_json(&e);
        return Ok(());
    }
    println!(
        "earned       {} credits for {} units in {} completed assignments",
        i(&e["earned"]),
        i(&e["units"]),
        i(&e["completed_assignments"])
    );
    println!(
        "fees         {} credits (paid by the studios to the protocol, on top)",
        i(&e["protocol_fees"])
    );
    println!(
        "withheld     {} credits (released {}, forfeited {}): pay waits for the node's next verified assignments",
        i(&e["withheld"]),
        i(&e["released"]),
        i(&e["forfeited"])
    );
    println!(
        "verifying    {} credits for {} samples of other providers' work your nodes re-ran right",
        i(&e["verification_pay"]),
        i(&e["verification_tasks"])
    );
    println!(
        "balance      {} credits, {} available",
        i(&e["balance"]),
        i(&e["available"])
    );
    Ok(())
}
