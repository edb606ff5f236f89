// The client side of the sequenced feed: a book rebuilt from a snapshot plus deltas.
// A delta whose `first` is not the previous sequence + 1 is a gap: the caller resynchronises.

export class Book {
  constructor() {
    this.reset();
  }

  reset() {
    this.seq = null;
    this.bids = new Map(); // price -> {qty, orders}
    this.asks = new Map();
    this.trades = []; // oldest first, bounded
    this.bbo = { bid: null, ask: null };
  }

  applySnapshot(m) {
    this.seq = m.seq;
    this.bids = new Map(m.bids.map((l) => [l.price, { qty: l.qty, orders: l.orders }]));
    this.asks = new Map(m.asks.map((l) => [l.price, { qty: l.qty, orders: l.orders }]));
    this.trades = m.trades.slice(-Book.TRADES_KEPT);
    this.bbo = m.bbo;
  }

  /** Applies a delta; returns false (and changes nothing) on a gap. */
  applyDelta(m) {
    if (this.seq === null || m.first !== this.seq + 1) return false;
    for (const c of m.changes) {
      const side = c.side === 'bid' ? this.bids : this.asks;
      if (c.qty === 0) side.delete(c.price);
      else side.set(c.price, { qty: c.qty, orders: c.orders });
    }
    for (const t of m.trades) this.trades.push(t);
    if (this.trades.length > Book.TRADES_KEPT) this.trades.splice(0, this.trades.length - Book.TRADES_KEPT);
    this.seq = m.last;
    this.bbo = m.bbo;
    return true;
  }

  /** Best first. */
  levels(side, depth) {
    const map = side === 'bid' ? this.bids : this.asks;
    const prices = [...map.keys()].sort((a, b) => (side === 'bid' ? b - a : a - b));
    return prices.slice(0, depth).map((p) => ({ price: p, ...map.get(p) }));
  }
}

Book.TRADES_KEPT = 200;
