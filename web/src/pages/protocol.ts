// The protocol's figures as the API exposes them: GRID supply, fee revenue, reward and
// buyback-and-burn epochs.
import { api } from '../api/client';
import { fmt, h, showError, status, table } from '../dom';
import type { Page } from '../main';

export function protocolPage(): Page {
  const st = status();
  const supply = h('div', { class: 'panel', 'data-testid': 'supply' }, h('h2', { text: 'GRID supply (base units)' }));
  const fees = h('div', { class: 'panel', 'data-testid': 'fees' }, h('h2', { text: 'Fee revenue (credits, minor units)' }));
  const epochs = h('div', { class: 'panel', 'data-testid': 'epochs' }, h('h2', { text: 'Epochs' }));
  const el = h('section', {}, h('h1', { text: 'Protocol' }), st, h('div', { class: 'grid' }, supply, fees), epochs);
  (async () => {
    const [s, f, e] = await Promise.all([api.supply(), api.fees(), api.epochs()]);
    supply.append(table(['', ''], [
      ['token', s.token], ['decimals', String(s.decimals)], ['max supply', fmt(s.max_supply)], ['minted', fmt(s.minted)],
      ['reserve', fmt(s.reserve)], ['rewards pool', fmt(s.rewards_pool)], ['buyback treasury', fmt(s.buyback_treasury)],
      ['burned', fmt(s.burned)], ['circulating', fmt(s.circulating)],
    ]));
    fees.append(table(['', ''], [
      ['revenue', fmt(f.revenue)], ['attributed to closed epochs', fmt(f.attributed)], ['unattributed', fmt(f.unattributed)],
      ['available', fmt(f.available)], ['buyback treasury', fmt(f.buyback_treasury)], ['rewards pool', fmt(f.rewards_pool)],
    ]));
    epochs.append(e.data.length === 0
      ? h('p', { class: 'muted', text: 'No epoch has closed yet.' })
      : table(['Epoch', 'Start', 'End', 'Fee revenue', 'Rewards', 'Buyback', 'Burned', 'GRID rewarded', 'Nodes rewarded'],
        e.data.map((x) => [String(x.epoch), x.start, x.end, fmt(x.fee_revenue), fmt(x.rewards_allocation), fmt(x.buyback_allocation),
          fmt(x.burned), fmt(x.grid_rewarded), fmt(x.rewarded_nodes)])));
  })().catch((e) => showError(st, e));
  return { el };
}
