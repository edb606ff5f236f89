// Browser test of the trader UI against the real stack: a private nats-server (JetStream), the
// real matching engine serving dev.toml's markets, and the real API serving web/dist and the
// feed. Orders go in over NATS (what the API's outbox does); Debian's chromium, driven by
// playwright-core, must show them on the ladder and follow live updates, a trade and a resync.
//
// Needs: GRIDBOOK_NATS_SERVER_BIN, GRIDBOOK_DATABASE_URL (`eval "$(cargo xtask env)"`), the
// debug binaries (`cargo build -p matching-engine -p gridbook-api`), /usr/bin/chromium and
// `npm ci` in web/. `cargo xtask test` provides all of it. Fails (never skips) without them.
// Screenshot: target/web-ui.png.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const target = process.env.CARGO_TARGET_DIR ? path.resolve(process.env.CARGO_TARGET_DIR) : path.join(root, 'target');
const profile = process.env.GRIDBOOK_WEB_TEST_PROFILE ?? 'debug';
const MARKET = 'EMBED-MINILM-L6';
const CHROMIUM = process.env.GRIDBOOK_CHROMIUM ?? '/usr/bin/chromium';

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run under \`cargo xtask test\` or eval "$(cargo xtask env)"`);
  return v;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
    s.on('error', reject);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn, ms = 30_000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try { const v = await fn(); if (v) return v; } catch (e) { last = e; }
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

const children = [];
function start(name, bin, args, env, logDir) {
  if (!fs.existsSync(bin)) throw new Error(`${bin} is missing: build it first (cargo build -p matching-engine -p gridbook-api)`);
  const log = fs.openSync(path.join(logDir, `${name}.log`), 'w');
  const child = spawn(bin, args, { env: { ...process.env, ...env }, stdio: ['ignore', log, log] });
  children.push(child);
  child.on('exit', (code, sig) => { if (!stopping) console.error(`${name} exited early: ${code ?? sig} (log: ${path.join(logDir, name + '.log')})`); });
  return child;
}
let stopping = false;
function stopAll() {
  stopping = true;
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
}

// Core NATS publish over the text protocol; JetStream stores it (the subject is the stream's).
async function natsPublish(port, subject, payload) {
  const sock = net.connect(port, '127.0.0.1');
  let buf = '';
  const waitFor = (re) => until(`NATS ${re}`, () => re.test(buf), 5_000);
  sock.on('data', (d) => { buf += d.toString(); });
  await waitFor(/^INFO /);
  const body = Buffer.from(JSON.stringify(payload));
  sock.write('CONNECT {"verbose":false,"pedantic":false,"name":"web-ui-test"}\r\n');
  sock.write(`PUB ${subject} ${body.length}\r\n`);
  sock.write(body);
  sock.write('\r\nPING\r\n');
  await waitFor(/PONG/);
  assert.ok(!/-ERR/.test(buf), `NATS error: ${buf}`);
  sock.end();
}

const place = (id, side, price, qty) => ({
  place: { id, account: side === 'bid' ? 1 : 2, side, price, qty, tif: 'gtc' },
});

async function main() {
  const natsBin = need('GRIDBOOK_NATS_SERVER_BIN');
  const dbUrl = need('GRIDBOOK_DATABASE_URL');
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (cargo xtask test does)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gridbook-web-test-'));
  const natsPort = await freePort();
  fs.writeFileSync(path.join(dir, 'nats.conf'),
    `listen: 127.0.0.1:${natsPort}\nmax_payload: 8MB\njetstream {\n  store_dir: "${path.join(dir, 'js')}"\n}\n`);
  start('nats-server', natsBin, ['-c', path.join(dir, 'nats.conf')], {}, dir);
  const natsUrl = `nats://127.0.0.1:${natsPort}`;
  const devToml = path.join(root, 'matching-engine/engine/config/dev.toml');
  await until('nats-server', () => new Promise((r) => { const s = net.connect(natsPort, '127.0.0.1', () => { s.end(); r(true); }); s.on('error', () => r(false)); }));
  start('matching-engine', path.join(target, profile, 'matching-engine'), ['run', '--config', devToml],
    { GRIDBOOK_NATS_URL: natsUrl, RUST_LOG: 'warn' }, dir);
  const apiPort = await freePort();
  start('gridbook-api', path.join(target, profile, 'gridbook-api'), ['run'], {
    GRIDBOOK_BIND: `127.0.0.1:${apiPort}`,
    GRIDBOOK_NATS_URL: natsUrl,
    GRIDBOOK_DATABASE_URL: dbUrl,
    GRIDBOOK_MARKETS_FILE: devToml,
    GRIDBOOK_WEB_DIR: path.join(root, 'web/dist'),
    GRIDBOOK_SECURE_COOKIES: 'false',
    RUST_LOG: 'info',
  }, dir);
  const api = `http://127.0.0.1:${apiPort}`;
  // The API is up and its feed is in sync with the engine (the market has a sequence).
  await until('the API and its feed', async () => {
    const r = await fetch(`${api}/v1/markets/${MARKET}`);
    return r.ok && (await r.json()).seq !== null;
  }, 60_000);

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 800 } });
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`${api}/?market=${MARKET}`);
    await page.locator('[data-testid="conn"][data-state="live"]').waitFor({ timeout: 20_000 });
    const options = await page.locator('#market option').allTextContents();
    assert.deepEqual(options, ['EMBED-MINILM-L6', 'GRID-CREDITS', 'RENDER-SD15-512', 'RENDER-TERRAIN-128']);

    // Orders on both sides: the ladder shows them.
    for (const cmd of [place(1, 'ask', 510, 7), place(2, 'ask', 520, 4), place(3, 'bid', 490, 5), place(4, 'bid', 480, 2), place(5, 'bid', 490, 1)]) {
      await natsPublish(natsPort, `market.${MARKET}.cmd`, cmd);
    }
    const row = (side, price) => page.locator(`#${side}s tr[data-price="${price}"]`);
    await until('the ladder to show the orders', async () =>
      (await row('bid', 490).count()) === 1 && (await row('ask', 520).count()) === 1 && (await row('bid', 480).count()) === 1);
    assert.deepEqual(await row('ask', 510).locator('td').allTextContents(), ['510', '7', '1']);
    assert.deepEqual(await row('bid', 490).locator('td').allTextContents(), ['490', '6', '2']);
    assert.equal(await page.locator('#best-bid').textContent(), '490');
    assert.equal(await page.locator('#best-ask').textContent(), '510');
    assert.equal(await page.locator('#spread').textContent(), '20');
    const seqBefore = Number(await page.locator('#seq').textContent());

    // A crossing bid: a trade at the ask's price; the ladder, tape and last price follow live.
    await natsPublish(natsPort, `market.${MARKET}.cmd`, place(6, 'bid', 515, 3));
    await until('the trade to show', async () => (await row('ask', 510).locator('td').nth(1).textContent()) === '4');
    await until('the tape', async () => (await page.locator('#tape tr').count()) === 1);
    assert.deepEqual((await page.locator('#tape tr td').allTextContents()).slice(1), ['510', '3', 'buy']);
    assert.equal(await page.locator('#last').textContent(), '510');
    assert.ok(Number(await page.locator('#seq').textContent()) > seqBefore, 'the sequence number moved');
    await until('24 h volume', async () => (await page.locator('#volume').textContent()) === '3', 15_000);

    // A gap: pretend we missed events; the next delta does not follow, the UI resynchronises
    // from a fresh snapshot and shows the right book.
    await page.evaluate(() => { window.gridbook.book.seq -= 3; });
    await natsPublish(natsPort, `market.${MARKET}.cmd`, { cancel: { id: 2, account: 2 } });
    await until('a resync', async () => (await page.evaluate(() => window.gridbook.resyncs)) === 1);
    await page.locator('[data-testid="conn"][data-state="live"]').waitFor({ timeout: 10_000 });
    await until('the cancel to show after the resync', async () => (await row('ask', 520).count()) === 0);
    const book = await (await fetch(`${api}/v1/markets/${MARKET}/book`)).json();
    assert.equal(Number(await page.locator('#seq').textContent()), book.seq);
    assert.deepEqual(book.asks.map((l) => [l.price, l.qty]), [[510, 4]]);

    // More depth for the picture.
    let id = 100;
    const more = [];
    for (let i = 1; i <= 8; i++) {
      more.push(place(id++, 'bid', 490 - 2 * i, 3 + ((i * 7) % 11)));
      more.push(place(id++, 'ask', 510 + 2 * i, 2 + ((i * 5) % 13)));
    }
    for (const cmd of more) await natsPublish(natsPort, `market.${MARKET}.cmd`, cmd);
    await until('the deeper book', async () => (await row('ask', 526).count()) === 1 && (await row('bid', 474).count()) === 1);
    await page.waitForTimeout(200);

    // Another market from the selector: empty book, still live.
    fs.mkdirSync(target, { recursive: true });
    await page.screenshot({ path: path.join(target, 'web-ui.png'), fullPage: true });
    await page.selectOption('#market', 'RENDER-SD15-512');
    await until('the other market', async () => (await page.locator('#bids tr').count()) === 0 && (await page.locator('[data-testid="conn"]').getAttribute('data-state')) === 'live');
    assert.deepEqual(errors, [], 'page errors');
    console.log(`web UI test passed; screenshot ${path.join(target, 'web-ui.png')}`);
  } finally {
    await browser.close();
  }
}

main().then(() => { stopAll(); process.exit(0); }, (e) => { console.error(`web UI test FAILED: ${e.stack ?? e}`); stopAll(); process.exit(1); });
