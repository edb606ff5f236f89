// Gridbook trader UI: market selector, live L2 ladder, depth chart, spread, last price, 24 h
// volume, trade tape; connection state and sequence number; resynchronises on a gap.
import { Book } from './book.js';

const LADDER_DEPTH = 15;
const TAPE_ROWS = 30;
const STATS_EVERY_MS = 10_000;

const $ = (id) => document.getElementById(id);
const book = new Book();
let markets = [];
let market = null;
let ws = null;
let backoff = 250;
let statsTimer = null;
let stats = null;
let dirty = false;
let reconnectTimer = null;
let resyncs = 0;

function setConn(state, text) {
  const el = $('conn');
  el.dataset.state = state;
  el.textContent = text ?? state;
}

async function loadMarkets() {
  const r = await fetch('/v1/markets');
  if (!r.ok) throw new Error(`GET /v1/markets: ${r.status}`);
  markets = (await r.json()).markets;
  const sel = $('market');
  sel.innerHTML = '';
  for (const m of markets) {
    const o = document.createElement('option');
    o.value = m.symbol;
    o.textContent = m.symbol;
    sel.appendChild(o);
  }
  const wanted = new URLSearchParams(location.search).get('market');
  const first = markets.find((m) => m.symbol === wanted) ?? markets[0];
  if (first) sel.value = first.symbol;
  sel.addEventListener('change', () => select(sel.value));
  if (first) select(first.symbol);
}

function select(symbol) {
  market = markets.find((m) => m.symbol === symbol);
  const u = new URL(location.href);
  u.searchParams.set('market', symbol);
  history.replaceState(null, '', u);
  $('info').textContent = market.kind === 'token'
    ? `tick ${market.tick_size} · lot ${market.lot_size} ${market.token} · fee ${market.fee_bps} bps (buyer) · token market`
    : `tick ${market.tick_size} · lot ${market.lot_size} · fee ${market.fee_bps} bps · ${market.workload}, ${market.items_per_unit} items/unit`;
  book.reset();
  stats = null;
  render();
  connect();
  clearInterval(statsTimer);
  loadStats();
  statsTimer = setInterval(loadStats, STATS_EVERY_MS);
}

async function loadStats() {
  const symbol = market.symbol;
  try {
    const r = await fetch(`/v1/markets/${encodeURIComponent(symbol)}/candles`);
    if (r.ok && market.symbol === symbol) {
      stats = await r.json();
      dirty = true;
    }
  } catch (_) { /* shown as "–" until the next try */ }
}

function connect() {
  clearTimeout(reconnectTimer);
  if (ws) {
    ws.onclose = null;
    ws.close();
  }
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  const symbol = market.symbol;
  const sock = new WebSocket(`${proto}://${location.host}/v1/markets/${encodeURIComponent(symbol)}/ws`);
  ws = sock;
  setConn('connecting');
  sock.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === 'snapshot') {
      book.applySnapshot(m);
      backoff = 250;
      setConn('live');
    } else if (m.type === 'delta') {
      if (!book.applyDelta(m)) {
        // A gap: our book is stale. Start over with a fresh snapshot.
        console.warn(`gap: expected ${book.seq + 1}, got ${m.first}; resynchronising`);
        setConn('resyncing');
        resyncs += 1;
        window.gridbook.resyncs = resyncs;
        book.reset();
        sock.onclose = null;
        sock.close();
        reconnectTimer = setTimeout(connect, 50);
        return;
      }
      if (m.trades.length) loadStatsSoon();
    }
    dirty = true;
  };
  sock.onclose = (ev) => {
    if (ws !== sock) return;
    setConn('disconnected', ev.reason ? `disconnected: ${ev.reason}` : 'disconnected');
    reconnectTimer = setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 5_000);
  };
}

let statsSoon = null;
function loadStatsSoon() {
  if (statsSoon) return;
  statsSoon = setTimeout(() => { statsSoon = null; loadStats(); }, 1_000);
}

const fmt = (n) => (n === null || n === undefined ? '–' : n.toLocaleString('en-US'));

function ladderRows(levels, side, maxQty) {
  return levels.map((l) => {
    const w = maxQty ? Math.round((l.qty / maxQty) * 100) : 0;
    const color = side === 'bid' ? 'rgba(46,189,133,.18)' : 'rgba(246,70,93,.18)';
    return `<tr class="lvl ${side}" data-price="${l.price}" style="background: linear-gradient(to left, ${color} ${w}%, transparent ${w}%)">` +
      `<td>${l.price}</td><td>${fmt(l.qty)}</td><td>${l.orders}</td></tr>`;
  }).join('');
}

function render() {
  const bids = book.levels('bid', LADDER_DEPTH);
  const asks = book.levels('ask', LADDER_DEPTH);
  const maxQty = Math.max(1, ...bids.map((l) => l.qty), ...asks.map((l) => l.qty));
  $('asks').innerHTML = ladderRows(asks.slice().reverse(), 'ask', maxQty);
  $('bids').innerHTML = ladderRows(bids, 'bid', maxQty);
  $('seq').textContent = book.seq ?? '–';
  const bb = bids[0]?.price ?? null;
  const ba = asks[0]?.price ?? null;
  $('best-bid').textContent = fmt(bb);
  $('best-ask').textContent = fmt(ba);
  const spread = bb !== null && ba !== null ? ba - bb : null;
  $('spread').textContent = fmt(spread);
  $('spread-row').textContent = `spread ${fmt(spread)}`;
  const lastTrade = book.trades[book.trades.length - 1];
  $('last').textContent = fmt(lastTrade?.price ?? stats?.last_price ?? null);
  $('volume').textContent = fmt(stats?.volume_24h ?? null);
  $('trades24').textContent = fmt(stats?.trades_24h ?? null);
  $('tape').innerHTML = book.trades.slice(-TAPE_ROWS).reverse().map((t) =>
    `<tr class="${t.taker_side}"><td>${new Date(t.time).toLocaleTimeString('en-GB')}</td>` +
    `<td>${t.price}</td><td>${fmt(t.qty)}</td><td>${t.taker_side === 'bid' ? 'buy' : 'sell'}</td></tr>`).join('');
  drawDepth();
}

function drawDepth() {
  const c = $('depth');
  const g = c.getContext('2d');
  const W = c.width, H = c.height, pad = 24;
  g.clearRect(0, 0, W, H);
  const bids = book.levels('bid', 200);
  const asks = book.levels('ask', 200);
  if (!bids.length && !asks.length) {
    g.fillStyle = '#7b8794';
    g.fillText('no orders', W / 2 - 24, H / 2);
    return;
  }
  const cum = (levels) => { let s = 0; return levels.map((l) => ({ price: l.price, total: (s += l.qty) })); };
  const cb = cum(bids), ca = cum(asks);
  const prices = [...cb.map((p) => p.price), ...ca.map((p) => p.price)];
  let lo = Math.min(...prices), hi = Math.max(...prices);
  if (lo === hi) { lo -= 1; hi += 1; }
  const maxTotal = Math.max(1, cb.at(-1)?.total ?? 0, ca.at(-1)?.total ?? 0);
  const x = (p) => pad + ((p - lo) / (hi - lo)) * (W - 2 * pad);
  const y = (v) => H - pad - (v / maxTotal) * (H - 2 * pad);
  const area = (pts, stroke, fill) => {
    if (!pts.length) return;
    g.beginPath();
    g.moveTo(x(pts[0].price), y(0));
    let prev = 0;
    for (const p of pts) { g.lineTo(x(p.price), y(prev)); g.lineTo(x(p.price), y(p.total)); prev = p.total; }
    const end = pts === cb ? lo : hi;
    g.lineTo(x(end), y(prev));
    g.lineTo(x(end), y(0));
    g.closePath();
    g.fillStyle = fill; g.fill();
    g.strokeStyle = stroke; g.stroke();
  };
  area(cb, '#2ebd85', 'rgba(46,189,133,.25)');
  area(ca, '#f6465d', 'rgba(246,70,93,.25)');
  g.fillStyle = '#7b8794';
  g.font = '11px system-ui';
  g.fillText(String(lo), pad, H - 6);
  g.fillText(String(hi), W - pad - 30, H - 6);
  g.fillText(`${maxTotal.toLocaleString('en-US')} lots`, pad, 14);
}

function loop() {
  if (dirty) { dirty = false; render(); }
  requestAnimationFrame(loop);
}

// For the browser test and the curious: the live book.
window.gridbook = { book, resyncs: 0 };
requestAnimationFrame(loop);
loadMarkets().catch((e) => { setConn('disconnected', String(e)); });
