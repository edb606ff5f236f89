//! Domain types: ids, market configuration, commands, events.
//!
//! The serde derives here ARE the JSONL format of `matching-engine replay` (one [`Command`] per
//! input line, one [`Event`] per output line) and of snapshots. Field names are snake_case,
//! enums are externally tagged, ids are plain JSON numbers. Treat any change as a format change.

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
        #[serde(transparent)]
        pub struct $name(pub u64);
    };
}

id_type!(
    /// Client-chosen order id (the NATS shell maps the order's UUID to it). Unique among the
    /// live orders of one book.
    OrderId
);
id_type!(
    /// Trading account: self-trade prevention compares these.
    AccountId
);
id_type!(
    /// Anti-whale identity: a provider identity or a cluster id supplied with the order
    /// (defaults to the account id).
    OwnerId
);

/// Market name, e.g. `EMBED-MINILM-L6`. Only carried in the config; events do not repeat it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct MarketId(pub String);

/// Price in ticks (integer). `min_price..=max_price` of the market.
pub type Price = u64;
/// Quantity in lots (integer).
pub type Qty = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Buyer (studio).
    Bid,
    /// Seller (provider).
    Ask,
}

impl Side {
    pub fn opposite(self) -> Side {
        match self {
            Side::Bid => Side::Ask,
            Side::Ask => Side::Bid,
        }
    }
}

/// Time in force. JSON: `"gtc"`, `"ioc"`, `"fok"`, `{"gtd":{"expires_at":5000}}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimeInForce {
    #[default]
    Gtc,
    /// Good till date: the order expires at the first command with `time >= expires_at`.
    Gtd { expires_at: u64 },
    /// Immediate or cancel: the unfilled remainder is cancelled.
    Ioc,
    /// Fill or kill: rejected (`fok_unfillable`) unless it can fill completely at once.
    Fok,
}

impl TimeInForce {
    pub fn rests(self) -> bool {
        matches!(self, TimeInForce::Gtc | TimeInForce::Gtd { .. })
    }
}

/// Self-trade prevention: what happens when a taker would trade with a resting order of the same
/// account. The taker's mode applies (its own `stp`, else the market's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StpMode {
    /// The incoming order's remainder is cancelled; the resting order stays.
    #[default]
    CancelNewest,
    /// The resting order is cancelled and matching continues.
    CancelOldest,
    /// Both the resting order and the incoming remainder are cancelled.
    CancelBoth,
}

/// A market's configuration: data, validated by [`MarketConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MarketConfig {
    pub market: MarketId,
    /// Decimal string: the price of one tick in the quote currency. Used only at the edges.
    pub tick_size: String,
    /// Decimal string: the units of work in one lot. Used only at the edges.
    pub lot_size: String,
    /// Lowest valid limit price, in ticks (≥ 1).
    pub min_price: Price,
    /// Highest valid limit price, in ticks; `max_price - min_price < MAX_PRICE_RANGE`.
    pub max_price: Price,
    /// Largest quantity of one order or amend, in lots (≤ 2^32 − 1, so that level totals of
    /// up to `max_orders` ≤ 2^31 orders fit in a u64).
    pub max_qty: Qty,
    /// Protocol fee in basis points of the notional, reported on each fill.
    pub fee_bps: u32,
    /// Anti-whale cap: the most an owner may hold of the window's matched volume, in basis points.
    /// 0 (or ≥ 10,000) disables the rule.
    pub whale_cap_bps: u32,
    /// Length of the rolling anti-whale window in command-time units. 0 disables the rule.
    pub whale_window: u64,
    /// While the window's total matched volume is below this, any owner may fill up to the
    /// amount that brings the total to it (so a quiet market is not blocked). See `whale`.
    pub whale_min_volume: Qty,
    /// The cap applies to a command only if at least this many distinct owners are active when
    /// it arrives: owners with matched volume in the window or with a resting ask. 0 or 1: the
    /// cap always applies (the default). See `whale`.
    pub whale_min_owners: u32,
    /// Most live (resting) orders in the book.
    pub max_orders: u32,
    /// Most non-empty price levels, both sides together.
    pub max_levels: u32,
    /// Default self-trade prevention mode.
    pub stp: StpMode,
}

/// The largest `max_price - min_price + 1` a market may have (levels live in a dense array).
pub const MAX_PRICE_RANGE: u64 = 1 << 20;

impl Default for MarketConfig {
    /// A permissive market for tools and tests: prices 1..=100,000 ticks, no fee, no whale cap.
    fn default() -> Self {
        MarketConfig {
            market: MarketId("TEST".into()),
            tick_size: "0.0001".into(),
            lot_size: "1".into(),
            min_price: 1,
            max_price: 100_000,
            max_qty: 1_000_000_000,
            fee_bps: 0,
            whale_cap_bps: 0,
            whale_window: 0,
            whale_min_volume: 0,
            whale_min_owners: 0,
            max_orders: 1_000_000,
            max_levels: 100_000,
            stp: StpMode::CancelNewest,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("min_price must be >= 1 and <= max_price")]
    PriceBounds,
    #[error("price range max_price - min_price + 1 exceeds {MAX_PRICE_RANGE}")]
    PriceRange,
    #[error("max_qty must be between 1 and 2^32 - 1")]
    MaxQty,
    #[error("fee_bps must be <= 10000")]
    Fee,
    #[error("max_orders must be between 1 and 2^31")]
    MaxOrders,
    #[error("max_levels must be >= 1")]
    MaxLevels,
}

impl MarketConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.min_price == 0 || self.min_price > self.max_price {
            return Err(ConfigError::PriceBounds);
        }
        if self.max_price - self.min_price >= MAX_PRICE_RANGE {
            return Err(ConfigError::PriceRange);
        }
        if self.max_qty == 0 || self.max_qty > u32::MAX as u64 {
            return Err(ConfigError::MaxQty);
        }
        if self.fee_bps > 10_000 {
            return Err(ConfigError::Fee);
        }
        if self.max_orders == 0 || self.max_orders > (1 << 31) {
            return Err(ConfigError::MaxOrders);
        }
        if self.max_levels == 0 {
            return Err(ConfigError::MaxLevels);
        }
        Ok(())
    }

    pub fn whale_enabled(&self) -> bool {
        self.whale_cap_bps > 0 && self.whale_cap_bps < 10_000 && self.whale_window > 0
    }
}

/// One input to the book. `seq` must increase strictly and `time` must not decrease from one
/// command to the next (else `out_of_sequence`).
///
/// JSON: `{"seq":1,"time":1000,"place":{"id":1,"account":7,"side":"bid","price":100,"qty":5}}`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub seq: u64,
    pub time: u64,
    #[serde(flatten)]
    pub kind: CommandKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Place(Place),
    Cancel(Cancel),
    Amend(Amend),
    /// A clock tick: expires due GTD orders (every command does that first) and nothing else.
    /// JSON: `"expire":{}`.
    Expire {},
}

impl CommandKind {
    /// The order the command is about, if any.
    pub fn order_id(&self) -> Option<OrderId> {
        match self {
            CommandKind::Place(p) => Some(p.id),
            CommandKind::Cancel(c) => Some(c.id),
            CommandKind::Amend(a) => Some(a.id),
            CommandKind::Expire {} => None,
        }
    }
}

/// Place an order. `price` absent = market order (must be IOC or FOK; a market bid needs a
/// `budget`: the most total notional, in ticks×lots, it may spend).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    pub id: OrderId,
    pub account: AccountId,
    /// Anti-whale identity; defaults to the account id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerId>,
    pub side: Side,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    pub qty: Qty,
    #[serde(default)]
    pub tif: TimeInForce,
    #[serde(default, skip_serializing_if = "is_false")]
    pub post_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<u64>,
    /// Overrides the market's self-trade prevention mode for this order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stp: Option<StpMode>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Cancel a resting order; `account` must be the order's account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    pub id: OrderId,
    pub account: AccountId,
}

/// Amend a resting order: `qty` is the new remaining quantity, `price` the new price.
/// Reducing the quantity at the same price keeps time priority; any price change or quantity
/// increase loses it (the order goes to the back of its new level, and a new price that crosses
/// the book matches first, as a taker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amend {
    pub id: OrderId,
    pub account: AccountId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qty: Option<Qty>,
}

/// One output of the book. `seq` is the book's own event sequence (gapless, per market; a
/// snapshot carries the next one), `cmd` the sequence number of the command that caused it.
///
/// JSON: `{"seq":3,"cmd":2,"fill":{"maker":1,"taker":2,...}}`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub cmd: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A place command passed validation (`price` absent for a market order).
    Accepted {
        id: OrderId,
        account: AccountId,
        side: Side,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        price: Option<Price>,
        qty: Qty,
    },
    /// The command changed nothing; `id` is the order it named, if any.
    Rejected {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<OrderId>,
        reason: RejectReason,
    },
    /// A trade at the resting (maker) order's price. `fee` = notional × fee_bps / 10,000 rounded
    /// down, in ticks×lots. `maker_left`/`taker_left`: quantities remaining after the fill.
    Fill {
        maker: OrderId,
        taker: OrderId,
        maker_account: AccountId,
        taker_account: AccountId,
        taker_side: Side,
        price: Price,
        qty: Qty,
        fee: u64,
        maker_left: Qty,
        taker_left: Qty,
    },
    /// `qty` remaining on the order was cancelled.
    Cancelled {
        id: OrderId,
        qty: Qty,
        reason: CancelReason,
    },
    /// A GTD order reached its expiry; `qty` was still resting.
    Expired { id: OrderId, qty: Qty },
    /// A resting order was amended to (`price`, `qty`).
    Amended {
        id: OrderId,
        price: Price,
        qty: Qty,
        kept_priority: bool,
    },
    /// The new state of one price level (what an L2 feed client applies): total quantity and
    /// order count; `qty: 0` removes the level.
    Delta {
        side: Side,
        price: Price,
        qty: Qty,
        orders: u32,
    },
}

/// Why a command was rejected. Serialized in snake_case, stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// `seq` not greater than the previous command's, or `time` earlier.
    OutOfSequence,
    /// Quantity 0.
    InvalidQuantity,
    /// Quantity above the market's `max_qty`.
    QuantityOutOfRange,
    /// Price outside `min_price..=max_price`.
    PriceOutOfRange,
    /// A market order that is GTC/GTD, or post-only with IOC/FOK/market.
    InvalidTimeInForce,
    /// GTD with `expires_at <= time`.
    InvalidExpiry,
    /// A market bid without a budget.
    MissingBudget,
    /// A budget on anything but a market bid.
    BudgetNotAllowed,
    /// A live order already has this id.
    DuplicateOrderId,
    /// No live order has this id.
    UnknownOrder,
    /// The order belongs to another account.
    NotOwner,
    /// What would rest after matching does not fit: the book would hold more than `max_orders`
    /// live orders. Judged on the book as matching would leave it, so an order that fills
    /// completely (or whose remainder is cancelled anyway) is never refused for it.
    BookFull,
    /// What would rest after matching would open a level beyond `max_levels` (judged, like
    /// `book_full`, on the book after matching; an amend's emptied old level counts as freed).
    TooManyLevels,
    /// A post-only order (or amend of one) would take liquidity.
    PostOnlyWouldCross,
    /// A FOK order cannot be filled completely now.
    FokUnfillable,
    /// An amend with neither price nor quantity.
    NothingToAmend,
}

/// Why (part of) an order was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// A cancel command.
    User,
    /// The unfilled remainder of an IOC or market order.
    Unfilled,
    /// A market bid's budget cannot pay for the next lot.
    Budget,
    /// Self-trade prevention.
    SelfTrade,
    /// No longer produced (the anti-whale cap is a priority rule, never a veto: see `whale`).
    /// Kept so that event logs written before that change still parse.
    WhaleCap,
}

/// One resting order (L3 view, snapshots).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestingOrder {
    pub id: OrderId,
    pub account: AccountId,
    pub owner: OwnerId,
    pub side: Side,
    pub price: Price,
    pub qty: Qty,
    /// Time priority: lower is earlier.
    pub priority: u64,
    pub tif: TimeInForce,
    #[serde(default, skip_serializing_if = "is_false")]
    pub post_only: bool,
    /// The order's own STP mode (used when an amend makes it a taker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stp: Option<StpMode>,
}

/// One price level (L2 view).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Level {
    pub price: Price,
    pub qty: Qty,
    pub orders: u32,
}

/// One fill counted in the anti-whale window (the ask side's owner).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowEntry {
    pub time: u64,
    pub owner: OwnerId,
    pub qty: Qty,
}

/// Everything needed to rebuild an identical book: [`crate::OrderBook::restore`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub config: MarketConfig,
    pub last_seq: u64,
    pub last_time: u64,
    pub next_event_seq: u64,
    pub next_priority: u64,
    /// Best price first, then time priority.
    pub bids: Vec<RestingOrder>,
    /// Best price first, then time priority.
    pub asks: Vec<RestingOrder>,
    /// Oldest first.
    pub whale_window: Vec<WindowEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    #[error("invalid order {0:?} in snapshot")]
    Order(OrderId),
}
