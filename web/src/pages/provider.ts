// The provider's console: nodes with challenge status and reliability inputs, asks (place, amend,
// cancel) beside the current book, assignments, earnings and withheld pay.
import { api, type S } from '../api/client';
import { field, fmt, h, showError, status, table } from '../dom';
import type { Page } from '../main';
import { signInForm, signOutButton, whoAmI } from './auth';

export function providerPage(): Page {
  const el = h('section', {}, h('h1', { text: 'Provider' }));
  let timer = 0;
  const render = async () => {
    clearInterval(timer);
    const me = await whoAmI();
    if (!me) { el.replaceChildren(el.firstChild!, signInForm('provider', 'provider', () => void render())); return; }
    if (me.role !== 'provider') {
      el.replaceChildren(el.firstChild!, h('p', {}, `Signed in as ${me.email}, a ${me.role} account: the provider console needs a provider account. `, signOutButton(() => void render())));
      return;
    }
    const st = status();
    const nodes = h('div', { class: 'panel', 'data-testid': 'nodes' }, h('h2', { text: 'Nodes' }));
    const asks = h('div', { class: 'panel', 'data-testid': 'asks' }, h('h2', { text: 'Asks' }));
    const book = h('div', { class: 'panel', 'data-testid': 'book' }, h('h2', { text: 'Book' }));
    const earnings = h('div', { class: 'panel', 'data-testid': 'earnings' }, h('h2', { text: 'Earnings (credits, minor units)' }));
    const assignments = h('div', { class: 'panel', 'data-testid': 'assignments' }, h('h2', { text: 'Assignments' }));
    const { markets } = await api.markets();
    const compute = markets.filter((m) => m.kind === 'compute');

    // Register a node.
    const nName = h('input', { id: 'node-name', required: true, maxlength: 100 });
    const nGpu = h('input', { id: 'node-gpu', required: true, maxlength: 100, value: 'cpu' });
    const nVram = h('input', { id: 'node-vram', type: 'number', min: 0, required: true, value: 0 });
    const nRegion = h('input', { id: 'node-region', required: true, value: 'eu-west' });
    const nodeForm = h('form', { 'aria-label': 'register a node', onsubmit: async (e: Event) => {
      e.preventDefault();
      try { await api.registerNode({ name: nName.value, gpu_model: nGpu.value, vram_mb: Number(nVram.value), region: nRegion.value }); st.textContent = 'node registered'; delete st.dataset.kind; await refresh(); }
      catch (err) { showError(st, err); }
    } }, field('Node name', nName), field('GPU model', nGpu), field('VRAM (MB)', nVram), field('Region', nRegion), h('button', { type: 'submit', text: 'Register node' }));

    // Place an ask.
    const aNode = h('select', { id: 'ask-node' });
    const aMarket = h('select', { id: 'ask-market', onchange: () => void loadBook() }, ...compute.map((m) => h('option', { value: m.symbol, text: m.symbol })));
    const aPrice = h('input', { id: 'ask-price', type: 'number', min: 1, step: 1, required: true });
    const aQty = h('input', { id: 'ask-qty', type: 'number', min: 1, step: 1, required: true });
    const askForm = h('form', { 'aria-label': 'place an ask', onsubmit: async (e: Event) => {
      e.preventDefault();
      try { const a = await api.createAsk({ node_id: aNode.value, market: aMarket.value, price: Number(aPrice.value), qty: Number(aQty.value) }); st.textContent = `ask ${a.id.slice(0, 8)} placed`; delete st.dataset.kind; await refresh(); }
      catch (err) { showError(st, err); }
    } }, field('Node', aNode), field('Market', aMarket), field('Price (credits per unit)', aPrice), field('Units', aQty), h('button', { type: 'submit', text: 'Place ask' }));

    const loadBook = async () => {
      const b = await api.book(aMarket.value, 10);
      const rows = [...[...b.asks].reverse().map((l) => ['ask', String(l.price), String(l.qty), String(l.orders)]), ...b.bids.map((l) => ['bid', String(l.price), String(l.qty), String(l.orders)])];
      book.replaceChildren(book.firstChild!, h('p', { class: 'muted', text: `${b.market}, sequence ${b.seq}` }),
        rows.length ? table(['Side', 'Price', 'Units', 'Orders'], rows, { id: 'provider-book' }) : h('p', { class: 'muted', text: 'The book is empty.' }));
    };

    const askRow = (a: S['AskOut']): (Node | string)[] => {
      const open = a.status === 'open';
      const price = h('input', { id: `amend-price-${a.id}`, type: 'number', min: 1, value: a.price, 'aria-label': `new price for ask ${a.id.slice(0, 8)}` });
      const qty = h('input', { id: `amend-qty-${a.id}`, type: 'number', min: 1, value: a.qty, 'aria-label': `new units for ask ${a.id.slice(0, 8)}` });
      const act = async (f: () => Promise<unknown>, done: string) => { try { await f(); st.textContent = done; delete st.dataset.kind; await refresh(); } catch (err) { showError(st, err); } };
      return [a.id.slice(0, 8), a.market, String(a.price), String(a.qty), a.status + (a.close_reason ? ` (${a.close_reason})` : ''),
        open ? h('form', { 'aria-label': `amend ask ${a.id.slice(0, 8)}`, 'data-ask': a.id, onsubmit: (e: Event) => { e.preventDefault(); void act(() => api.amendAsk(a.id, { price: Number(price.value), qty: Number(qty.value) }), 'ask amended'); } },
          price, qty, h('button', { type: 'submit', text: 'Amend' }),
          h('button', { type: 'button', text: 'Cancel', onclick: () => void act(() => api.cancelAsk(a.id), 'ask cancelled') })) : ''];
    };

    const refresh = async () => {
      const [n, a, e, g] = await Promise.all([api.nodes(), api.asks(), api.earnings(), api.assignments()]);
      const keep = aNode.value;
      aNode.replaceChildren(...n.data.map((x) => h('option', { value: x.id, text: `${x.name} (${x.challenge_status})`, selected: x.id === keep })));
      nodes.replaceChildren(nodes.firstChild!, n.data.length
        ? table(['Node', 'Status', 'Challenge', 'Class', 'Reputation', 'Uptime 24 h', 'Last heartbeat'], n.data.map((x) => [
          x.name, x.status, x.challenge_status + (x.challenge_detail ? ` — ${x.challenge_detail}` : ''), x.challenge_class,
          fmt(x.reputation), `${(x.uptime_24h_bps / 100).toFixed(1)} %`, x.last_heartbeat_at ?? '—']))
        : h('p', { class: 'muted', text: 'No nodes yet.' }), nodeForm);
      asks.replaceChildren(asks.firstChild!, askForm, a.data.length
        ? table(['Ask', 'Market', 'Price', 'Units', 'Status', 'Amend / cancel'], a.data.map(askRow), { id: 'ask-list' })
        : h('p', { class: 'muted', text: 'No asks yet.' }));
      earnings.replaceChildren(earnings.firstChild!, table(['', ''], [
        ['completed assignments', fmt(e.completed_assignments)], ['units', fmt(e.units)], ['earned', fmt(e.earned)], ['protocol fees', fmt(e.protocol_fees)],
        ['balance', fmt(e.balance)], ['available', fmt(e.available)], ['withheld', fmt(e.withheld)], ['released', fmt(e.released)], ['forfeited', fmt(e.forfeited)],
        ['verification tasks', fmt(e.verification_tasks)], ['verification pay', fmt(e.verification_pay)]]));
      assignments.replaceChildren(assignments.firstChild!, g.data.length
        ? table(['Assignment', 'Job', 'Market', 'Units', 'Price', 'Status'], g.data.map((x) => [x.id.slice(0, 8), x.job_id.slice(0, 8), x.market, fmt(x.units), fmt(x.price), x.status]))
        : h('p', { class: 'muted', text: 'None yet.' }));
      await loadBook();
    };
    el.replaceChildren(el.firstChild!, h('p', {}, `Signed in as ${me.email} (${me.role}) `, signOutButton(() => void render())), st,
      h('div', { class: 'grid' }, nodes, asks, book), h('div', { class: 'grid' }, earnings, assignments));
    await refresh();
    // The periodic refresh rebuilds the forms: skip it while the user is typing in one.
    timer = window.setInterval(() => { if (!(document.activeElement instanceof HTMLInputElement)) void refresh().catch(() => undefined); }, 5000);
  };
  void render().catch((e) => { const st = status(); showError(st, e); el.append(st); });
  return { el, dispose: () => clearInterval(timer) };
}
