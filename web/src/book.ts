// The client side of the sequenced feed (GET /v1/markets/{m}/ws): a snapshot replaces the
// book; a delta must start at seq + 1, otherwise it is a gap and the caller resynchronises.
import type { S } from './api/client';

type Level = S['BookLevel'];
export type Delta = S['WsDelta'];
/** The first message (and any resync): replaces the book. */
export type Snapshot = S['WsSnapshot'];

export class Book {
  seq = 0;
  bids = new Map<number, Level>();
  asks = new Map<number, Level>();

  applySnapshot(s: Snapshot): void {
    this.seq = s.seq;
    this.bids = new Map(s.bids.map((l) => [l.price, l]));
    this.asks = new Map(s.asks.map((l) => [l.price, l]));
  }

  /** Applies a delta; returns false (and changes nothing) on a gap. */
  applyDelta(d: Delta): boolean {
    if (d.first !== this.seq + 1) return false;
    for (const c of d.changes) {
      const side = c.side === 'bid' ? this.bids : this.asks;
      if (c.qty === 0) side.delete(c.price);
      else side.set(c.price, { price: c.price, qty: c.qty, orders: c.orders });
    }
    this.seq = d.last;
    return true;
  }

  sorted(side: 'bid' | 'ask', n: number): Level[] {
    const m = side === 'bid' ? this.bids : this.asks;
    const levels = [...m.values()].sort((a, b) => (side === 'bid' ? b.price - a.price : a.price - b.price));
    return levels.slice(0, n);
  }
}
