// The studio's job desk: balance and holds; upload a JSONL file, choose market, limit price and
// deadline with a cost estimate from the current book; submit; the job list with progress; a
// job page with its verifications and downloads.
import { api, type S } from '../api/client';
import { field, fmt, h, showError, status, table } from '../dom';
import type { Page } from '../main';
import { signInForm, signOutButton, whoAmI } from './auth';

/** What `units` would cost if bought now from the asks at or under `limit`: filled units and
 *  their price, plus the fee. The escrow reserves units × limit (+ fee) whatever the book. */
export function estimate(asks: S['BookLevel'][], units: number, limit: number, feeBps: number) {
  let left = units; let cost = 0;
  for (const l of asks) {
    if (l.price > limit || left <= 0) break;
    const q = Math.min(left, l.qty);
    cost += q * l.price; left -= q;
  }
  const fee = (x: number) => Math.ceil((x * feeBps) / 10_000);
  const reserve = units * limit;
  return { filled: units - left, cost, fee: fee(cost), reserve, reserveFee: fee(reserve) };
}

function balancePanel(b: S['Balance']): HTMLElement {
  return h('div', { class: 'panel', 'data-testid': 'balance' }, h('h2', { text: `Balance (${b.currency}, minor units)` }),
    table(['', ''], [['available', fmt(b.available)], ['held for open orders', fmt(b.held)], ['posted', fmt(b.posted)], ['incoming (pending)', fmt(b.pending_credits)]]));
}

function jobRow(j: S['JobOut']): (Node | string)[] {
  const pct = Math.round(j.progress * 100);
  return [
    h('a', { href: `#/jobs/${j.id}`, text: j.id.slice(0, 8) }), j.market, j.status,
    h('span', {}, h('progress', { max: 100, value: pct, 'aria-label': `job ${j.id.slice(0, 8)} progress` }), ` ${pct} %`),
    fmt(j.request_counts.total), fmt(j.request_counts.completed), fmt(j.request_counts.failed),
    fmt(j.request_counts.running), fmt(j.request_counts.queued), fmt(j.units), fmt(j.limit_price), new Date(j.deadline).toLocaleString('en-GB'),
  ];
}

export function studioPage(): Page {
  const el = h('section', {}, h('h1', { text: 'Studio' }));
  let timer = 0;
  const render = async () => {
    clearInterval(timer);
    const me = await whoAmI();
    if (!me) { el.replaceChildren(el.firstChild!, signInForm('studio', 'studio', () => void render())); return; }
    if (me.role !== 'studio') {
      el.replaceChildren(el.firstChild!, h('p', {}, `Signed in as ${me.email}, a ${me.role} account: the job desk needs a studio account. `, signOutButton(() => void render())));
      return;
    }
    const st = status();
    const balance = h('div');
    const jobs = h('div', { class: 'panel', 'data-testid': 'jobs' }, h('h2', { text: 'Jobs' }));
    const { markets } = await api.markets();
    const compute = markets.filter((m) => m.kind === 'compute');
    const market = h('select', { id: 'job-market' }, ...compute.map((m) => h('option', { value: m.symbol, text: m.symbol })));
    const file = h('input', { id: 'job-file', type: 'file', accept: '.jsonl,application/jsonl', required: true });
    const limit = h('input', { id: 'job-limit', type: 'number', min: 1, step: 1, required: true });
    const minutes = h('input', { id: 'job-deadline', type: 'number', min: 2, max: 10080, value: 60, required: true });
    const est = h('output', { id: 'job-estimate', for: 'job-limit job-file job-market', text: 'choose a file and a limit' });
    let lines = 0;
    const updateEstimate = async () => {
      const m = compute.find((x) => x.symbol === market.value);
      const lim = Number(limit.value);
      if (!m || !lines || !lim) { est.textContent = 'choose a file and a limit'; return; }
      const units = Math.ceil(lines / (m.items_per_unit ?? 1));
      const book = await api.book(m.symbol, 1000);
      const e = estimate(book.asks, units, lim, m.fee_bps);
      est.textContent = `${units} units (${lines} lines); at today's asks ≤ ${lim}: ${e.filled} units fill now for ${fmt(e.cost)} + fee ${fmt(e.fee)}; ` +
        `reserved at submission: ${fmt(e.reserve)} + fee ${fmt(e.reserveFee)} (credits, minor units)`;
    };
    file.addEventListener('change', async () => {
      const f = file.files?.[0];
      lines = f ? (await f.text()).split('\n').filter((l) => l.trim()).length : 0;
      void updateEstimate().catch((e) => showError(st, e));
    });
    for (const i of [limit, market]) i.addEventListener('input', () => void updateEstimate().catch((e) => showError(st, e)));
    const form = h('form', { 'aria-label': 'submit a job', onsubmit: async (e: Event) => {
      e.preventDefault();
      st.textContent = ''; delete st.dataset.kind;
      try {
        const f = file.files?.[0];
        if (!f) throw new Error('choose a JSONL file');
        const up = await api.uploadBatch(market.value, f.name, f);
        const job = await api.createJob({ market: market.value, input_file: up.id, limit_price: Number(limit.value),
          deadline: new Date(Date.now() + Number(minutes.value) * 60_000).toISOString() });
        st.textContent = `submitted job ${job.id}`;
        await refresh();
      } catch (err) { showError(st, err); }
    } },
    field('Market', market), field('Input (JSONL, one request a line)', file), field('Limit price (credits per unit)', limit),
    field('Deadline (minutes from now)', minutes), h('button', { type: 'submit', text: 'Submit job' }));
    const refresh = async () => {
      const [b, j] = await Promise.all([api.balance(), api.jobs()]);
      balance.replaceChildren(balancePanel(b));
      jobs.replaceChildren(jobs.firstChild!, j.data.length
        ? table(['Job', 'Market', 'Status', 'Progress', 'Requests', 'Succeeded', 'Failed', 'Running', 'Queued', 'Units', 'Limit', 'Deadline'], j.data.map(jobRow))
        : h('p', { class: 'muted', text: 'No jobs yet.' }));
    };
    el.replaceChildren(el.firstChild!, h('p', {}, `Signed in as ${me.email} (${me.role}) `, signOutButton(() => void render())),
      h('div', { class: 'grid' }, balance, h('div', { class: 'panel' }, h('h2', { text: 'New job' }), form, h('p', {}, est), st)), jobs);
    await refresh();
    timer = window.setInterval(() => void refresh().catch(() => undefined), 3000);
  };
  void render().catch((e) => { const st = status(); showError(st, e); el.append(st); });
  return { el, dispose: () => clearInterval(timer) };
}

export function jobPage(id: string): Page {
  const st = status();
  const body = h('div');
  const el = h('section', {}, h('h1', { text: `Job ${id.slice(0, 8)}` }), st, body);
  let timer = 0;
  let first: { t: number; p: number } | undefined;
  const refresh = async () => {
    const [j, v, a] = await Promise.all([api.job(id), api.verifications(id).catch(() => ({ data: [] }) as S['VerificationList']), api.jobAssignments(id)]);
    const pct = Math.round(j.progress * 100);
    // ETA from the progress seen since this page opened (the API reports progress, not a rate).
    const now = Date.now();
    first ??= { t: now, p: j.progress };
    const rate = (j.progress - first.p) / Math.max(1, now - first.t);
    const eta = j.progress >= 1 ? 'done' : rate > 0 ? `${Math.ceil((1 - j.progress) / rate / 1000)} s` : '—';
    body.replaceChildren(
      h('div', { class: 'grid' },
        h('div', { class: 'panel' }, table(['', ''], [
          ['status', j.status], ['market', j.market], ['progress', h('span', {}, h('progress', { max: 100, value: pct, 'aria-label': 'progress' }), ` ${pct} %`)],
          ['ETA', eta], ['requests', fmt(j.request_counts.total)], ['succeeded', fmt(j.request_counts.completed)], ['failed', fmt(j.request_counts.failed)],
          ['running', fmt(j.request_counts.running)], ['queued', fmt(j.request_counts.queued)],
          ['units', fmt(j.units)], ['limit (credits per unit)', fmt(j.limit_price)], ['deadline', j.deadline],
        ])),
        j.escrow ? h('div', { class: 'panel' }, h('h2', { text: 'Escrow (minor units)' }), table(['', ''], [
          ['reserved', fmt(j.escrow.reserved)], ['open', fmt(j.escrow.open)], ['held', fmt(j.escrow.held)], ['spent', fmt(j.escrow.spent)], ['released', fmt(j.escrow.released)],
        ])) : null),
      h('p', {},
        j.output_file ? h('a', { href: `/v1/jobs/${id}/output`, download: `${id}-output.jsonl`, text: 'Download output' }) : h('span', { class: 'muted', text: 'No output yet. ' }),
        ' ',
        j.error_file ? h('a', { href: `/v1/jobs/${id}/errors`, download: `${id}-errors.jsonl`, text: 'Download errors' }) : null),
      h('div', { class: 'panel', 'data-testid': 'assignments' }, h('h2', { text: 'Assignments (how the book split the job over providers\' nodes)' }), a.data.length
        ? table(['Assignment', 'Node', 'Region', 'GPU', 'Units', 'Lines', 'Price', 'Status'], a.data.map((x) => [x.id.slice(0, 8), x.node_id.slice(0, 8), x.node_region, x.node_gpu_model,
          fmt(x.units), `${x.item_start + 1}–${x.item_start + x.item_count}`, fmt(x.price), x.status]))
        : h('p', { class: 'muted', text: 'None yet: the job waits in the book for a provider.' })),
      h('div', { class: 'panel' }, h('h2', { text: 'Verifications' }), v.data.length
        ? table(['Assignment', 'Outcome', 'Detail'], v.data.map((x) => [String(x.assignment_id).slice(0, 8), String(x.outcome), String(x.detail ?? '')]))
        : h('p', { class: 'muted', text: 'None yet.' })));
  };
  void refresh().catch((e) => showError(st, e));
  timer = window.setInterval(() => void refresh().catch((e) => showError(st, e)), 3000);
  return { el, dispose: () => clearInterval(timer) };
}
