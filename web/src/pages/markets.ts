// Every market in one table: last price, 24 h change and volume (from the engine's candles),
// best bid and ask, unit and fee.
import { api, type S } from '../api/client';
import { fmt, h, showError, status, table } from '../dom';
import type { Page } from '../main';

function change(c: S['CandlesView']): string {
  const first = c.candles.find((k) => k.start >= Date.now() - 24 * 3600_000);
  if (!first || c.last_price === null || c.last_price === undefined) return '—';
  const pct = ((c.last_price - first.open) / first.open) * 100;
  return `${pct >= 0 ? '+' : ''}${pct.toFixed(2)} %`;
}

export function marketsPage(): Page {
  const st = status();
  const holder = h('div', { class: 'panel' });
  const el = h('section', {}, h('h1', { text: 'Markets' }), st, holder,
    h('p', { class: 'muted', text: 'Prices are credits (minor units) per unit of work, the figure the ledger charges; volume is in units.' }));
  (async () => {
    const { markets } = await api.markets();
    const candles = await Promise.all(markets.map((m) => api.candles(m.symbol).catch(() => null)));
    const rows = markets.map((m, i) => {
      const c = candles[i];
      return [
        h('a', { href: `#/market/${encodeURIComponent(m.symbol)}`, text: m.symbol }),
        m.kind === 'token' ? `token ${m.token ?? ''}` : `${m.workload ?? ''} (${m.items_per_unit ?? '?'} lines/unit)`,
        fmt(c?.last_price), c ? change(c) : '—', fmt(c?.volume_24h),
        fmt(m.bbo.bid), fmt(m.bbo.ask), `${(m.fee_bps / 100).toFixed(2)} %`,
      ];
    });
    holder.replaceChildren(table(['Market', 'Unit', 'Last', '24 h change', '24 h volume', 'Best bid', 'Best ask', 'Fee'], rows, { 'data-testid': 'markets' }));
  })().catch((e) => showError(st, e));
  return { el };
}
