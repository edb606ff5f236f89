// The trader's screen: live ladder with size bars, depth chart, spread, trade tape and 1-minute
// candles, from the WebSocket feed. Messages are queued and applied once per animation frame
// (one DOM update per frame however fast the feed is). A delta that does not follow the last
// sequence is a gap: the state shows "resync" and the page reconnects for a fresh snapshot.
import { CandlestickSeries, createChart, type IChartApi, type ISeriesApi, type UTCTimestamp } from 'lightweight-charts';
import { api, type S } from '../api/client';
import { Book, type Delta, type Snapshot } from '../book';
import { field, fmt, h, showError, status } from '../dom';
import type { Page } from '../main';

const DEPTH = 20;
const TAPE = 30;

type Ui = { book: Book; resyncs: number; frames: number[]; work: number[]; messages: number };
declare global { interface Window { gridbook: Ui } }

export function marketPage(symbol: string): Page {
  const st = status();
  const select = h('select', { id: 'market', onchange: () => { location.hash = `#/market/${encodeURIComponent(select.value)}`; } });
  const conn = h('span', { class: 'conn', 'data-testid': 'conn', 'data-state': 'connecting', text: 'connecting' });
  const stat = (id: string, label: string) => h('span', {}, h('b', { text: label }), h('output', { id, text: '—' }));
  const asks = h('tbody', { id: 'asks', class: 'asks' });
  const bids = h('tbody', { id: 'bids', class: 'bids' });
  const ladderHead = () => h('thead', {}, h('tr', {}, ...['Price', 'Size', 'Orders', ''].map((t) => h('th', { scope: 'col', text: t }))));
  const tape = h('tbody', { id: 'tape' });
  const depth = h('canvas', { class: 'depth', id: 'depth', role: 'img', 'aria-label': 'depth chart: cumulative size by price' });
  const chartEl = h('div', { class: 'chart', id: 'candles', role: 'img', 'aria-label': '1-minute candles' });
  const el = h('section', {},
    h('h1', { text: `Market ${symbol}` }),
    h('div', { class: 'stats' },
      field('Market', select),
      h('span', {}, h('b', { text: 'Feed' }), conn),
      stat('seq', 'Sequence'), stat('best-bid', 'Best bid'), stat('best-ask', 'Best ask'), stat('spread', 'Spread'),
      stat('last', 'Last'), stat('volume', '24 h volume'), stat('high', '24 h high'), stat('low', '24 h low')),
    st,
    h('p', { class: 'muted', id: 'unit' }),
    h('div', { class: 'grid' },
      h('div', { class: 'panel' }, h('h2', { text: 'Ladder' }),
        h('table', { class: 'ladder', 'aria-label': 'asks' }, ladderHead(), asks),
        h('table', { class: 'ladder', 'aria-label': 'bids' }, ladderHead(), bids)),
      h('div', { class: 'panel' }, h('h2', { text: 'Depth' }), depth, h('h2', { text: '1-minute candles' }), chartEl),
      h('div', { class: 'panel' }, h('h2', { text: 'Trades' }),
        h('table', { 'aria-label': 'trade tape' }, h('thead', {}, h('tr', {}, ...['Time', 'Price', 'Size', 'Taker'].map((t) => h('th', { scope: 'col', text: t })))), tape))));

  const ui: Ui = { book: new Book(), resyncs: 0, frames: [], work: [], messages: 0 };
  window.gridbook = ui;
  let ws: WebSocket | undefined;
  let closed = false;
  let queue: (Snapshot | Delta)[] = [];
  let trades: S['Trade'][] = [];
  let raf = 0;
  let lastFrame = 0;
  let chart: IChartApi | undefined;
  let series: ISeriesApi<'Candlestick'> | undefined;
  let candlesTimer = 0;
  let lastCandleFetch = 0;
  let tradeSeen = false;
  let lastMessage = 0;

  const setConn = (state: string) => { conn.dataset.state = state; conn.textContent = state; };

  function connect(): void {
    if (closed) return;
    setConn(ui.resyncs > 0 ? 'resync' : 'connecting');
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/markets/${encodeURIComponent(symbol)}/ws`;
    const sock = new WebSocket(url);
    ws = sock;
    sock.onmessage = (ev) => {
      ui.messages++;
      lastMessage = performance.now();
      queue.push(JSON.parse(ev.data as string) as Snapshot | Delta);
      if (!raf) raf = requestAnimationFrame(frame);
    };
    sock.onclose = () => {
      if (ws !== sock || closed) return;
      setConn('closed');
      setTimeout(connect, 1000);
    };
  }

  function resync(): void {
    ui.resyncs++;
    queue = [];
    const old = ws;
    ws = undefined;
    old?.close();
    connect();
  }

  function frame(t: number): void {
    raf = 0;
    const t0 = performance.now();
    if (lastFrame) ui.frames.push(t - lastFrame);
    lastFrame = t;
    const msgs = queue;
    queue = [];
    for (const m of msgs) {
      if (m.type === 'snapshot') {
        ui.book.applySnapshot(m as Snapshot);
        trades = [...(m as Snapshot).trades].sort((a, b) => b.seq - a.seq).slice(0, TAPE);
        setConn('live');
      } else if (!ui.book.applyDelta(m as Delta)) {
        resync();
        return;
      } else if ((m as Delta).trades.length) {
        trades = [...[...(m as Delta).trades].reverse(), ...trades].slice(0, TAPE);
        tradeSeen = true;
      }
    }
    render();
    ui.work.push(performance.now() - t0);
    if (ui.frames.length > 5000) { ui.frames.splice(0, 2500); ui.work.splice(0, 2500); }
    // Keep sampling frames while messages flow (and 1 s after), so the frame times measured
    // include the frames without a message.
    if (performance.now() - lastMessage < 1000) raf = requestAnimationFrame(frame);
    else lastFrame = 0;
  }

  function rows(body: HTMLElement, levels: S['BookLevel'][], max: number): void {
    // Reuse rows: update text only where it changed.
    while (body.children.length > levels.length) body.lastElementChild!.remove();
    levels.forEach((l, i) => {
      let tr = body.children[i] as HTMLTableRowElement | undefined;
      if (!tr) {
        tr = h('tr', {}, h('td'), h('td'), h('td'), h('td', { class: 'bar' }, h('div', { class: 'fill' })));
        body.append(tr);
      }
      const p = String(l.price);
      if (tr.dataset.price !== p) { tr.dataset.price = p; tr.cells[0].textContent = p; }
      const q = String(l.qty);
      if (tr.cells[1].textContent !== q) tr.cells[1].textContent = q;
      const o = String(l.orders);
      if (tr.cells[2].textContent !== o) tr.cells[2].textContent = o;
      (tr.cells[3].firstElementChild as HTMLElement).style.width = `${Math.max(2, (l.qty / max) * 100)}%`;
    });
  }

  function render(): void {
    const b = ui.book;
    const a = b.sorted('ask', DEPTH);
    const d = b.sorted('bid', DEPTH);
    const max = Math.max(1, ...a.map((l) => l.qty), ...d.map((l) => l.qty));
    rows(asks, [...a].reverse(), max);
    rows(bids, d, max);
    const set = (id: string, v: string) => { const o = el.querySelector<HTMLOutputElement>(`#${id}`)!; if (o.textContent !== v) o.textContent = v; };
    set('seq', String(b.seq));
    set('best-bid', d[0] ? String(d[0].price) : '—');
    set('best-ask', a[0] ? String(a[0].price) : '—');
    set('spread', d[0] && a[0] ? String(a[0].price - d[0].price) : '—');
    if (trades[0]) set('last', String(trades[0].price));
    renderTape();
    drawDepth(d, a);
    if (tradeSeen && performance.now() - lastCandleFetch > 1000) { tradeSeen = false; void loadCandles(); }
  }

  function renderTape(): void {
    const key = trades.map((t) => t.seq).join(',');
    if (tape.dataset.key === key) return;
    tape.dataset.key = key;
    tape.replaceChildren(...trades.map((t) => h('tr', { 'data-seq': t.seq },
      h('td', { text: new Date(t.time).toLocaleTimeString('en-GB') }), h('td', { text: String(t.price) }),
      h('td', { text: String(t.qty) }), h('td', { text: t.taker_side === 'bid' ? 'buy' : 'sell' }))));
  }

  function drawDepth(bidsL: S['BookLevel'][], asksL: S['BookLevel'][]): void {
    const ctx = depth.getContext('2d');
    if (!ctx) return;
    const w = (depth.width = depth.clientWidth || 300);
    const hgt = (depth.height = depth.clientHeight || 180);
    ctx.clearRect(0, 0, w, hgt);
    if (!bidsL.length && !asksL.length) return;
    const cum = (ls: S['BookLevel'][]) => { let s = 0; return ls.map((l) => ({ price: l.price, total: (s += l.qty) })); };
    const cb = cum(bidsL); const ca = cum(asksL);
    const prices = [...cb, ...ca].map((x) => x.price);
    const pad = Math.max(1, (Math.max(...prices) - Math.min(...prices)) * 0.1);
    const lo = Math.min(...prices) - pad; const hi = Math.max(...prices) + pad; const span = hi - lo;
    const top = Math.max(1, ...cb.map((x) => x.total), ...ca.map((x) => x.total));
    const x = (p: number) => ((p - lo) / span) * w;
    const y = (q: number) => hgt - 4 - (q / top) * (hgt - 12);
    // A step line per side, from its best price out to the chart's edge.
    const path = (pts: { price: number; total: number }[], edge: number, color: string) => {
      if (!pts.length) return;
      ctx.beginPath(); ctx.moveTo(x(pts[0].price), y(0));
      let prev = 0;
      for (const p of pts) { ctx.lineTo(x(p.price), y(prev)); ctx.lineTo(x(p.price), y(p.total)); prev = p.total; }
      ctx.lineTo(x(edge), y(prev)); ctx.lineTo(x(edge), y(0)); ctx.closePath();
      ctx.fillStyle = color; ctx.fill();
    };
    path(cb, lo, 'rgba(46,166,107,0.5)'); path(ca, hi, 'rgba(224,86,79,0.5)');
  }

  async function loadCandles(): Promise<void> {
    lastCandleFetch = performance.now();
    try {
      const c = await api.candles(symbol);
      const set = (id: string, v: string) => { el.querySelector<HTMLOutputElement>(`#${id}`)!.textContent = v; };
      set('volume', fmt(c.volume_24h)); set('high', fmt(c.high_24h)); set('low', fmt(c.low_24h));
      if (c.last_price !== null && c.last_price !== undefined && !trades.length) set('last', String(c.last_price));
      if (!chart) {
        chart = createChart(chartEl, { autoSize: true, layout: { background: { color: 'transparent' }, textColor: '#8b96a3' }, grid: { vertLines: { color: '#2a313c' }, horzLines: { color: '#2a313c' } }, timeScale: { timeVisible: true } });
        series = chart.addSeries(CandlestickSeries, { upColor: '#2ea66b', downColor: '#e0564f', wickUpColor: '#2ea66b', wickDownColor: '#e0564f', borderVisible: false });
      }
      series!.setData(c.candles.map((k) => ({ time: (k.start / 1000) as UTCTimestamp, open: k.open, high: k.high, low: k.low, close: k.close })));
      chartEl.dataset.candles = String(c.candles.length);
      chartEl.dataset.volume = String(c.candles.reduce((s, k) => s + k.volume, 0));
    } catch (e) {
      showError(st, e);
    }
  }

  (async () => {
    const [{ markets }] = await Promise.all([api.markets()]);
    select.replaceChildren(...markets.map((m) => h('option', { value: m.symbol, text: m.symbol, selected: m.symbol === symbol })));
    const m = markets.find((x) => x.symbol === symbol);
    if (!m) throw new Error(`unknown market ${symbol}`);
    el.querySelector('#unit')!.textContent = m.kind === 'token'
      ? `Prices: credits (minor units) per ${m.token_units_per_lot ?? '?'} ${m.token ?? 'token'} base units; fee ${(m.fee_bps / 100).toFixed(2)} %.`
      : `Prices: credits (minor units) per unit of work (${m.items_per_unit ?? '?'} input lines); sizes in units; fee ${(m.fee_bps / 100).toFixed(2)} %.`;
    connect();
    await loadCandles();
    candlesTimer = window.setInterval(() => void loadCandles(), 15_000);
  })().catch((e) => showError(st, e));

  return {
    el,
    dispose: () => { closed = true; ws?.close(); if (raf) cancelAnimationFrame(raf); clearInterval(candlesTimer); chart?.remove(); },
  };
}
