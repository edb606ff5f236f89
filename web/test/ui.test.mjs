// Browser test of the web app against the real stack (test/stack.mjs): a private nats-server,
// the real matching engine, settlement worker and API (serving web/build), PostgreSQL.
// Debian's chromium driven by playwright-core. Fails (never skips) when a part is missing.
//
// Covers: the committed openapi.json is what the API serves; the markets table; the trader
// page (the book moves on orders, a fill on the tape and in the candles, a forced gap shows a
// resync); ladder frame times at 1,000 book updates/s (p50/p99 printed); a studio signs up,
// is credited, uploads JSONL, sees the estimate, submits and sees the job (and its bid on the
// book); a second provider's real executor agent (ONNX Runtime, MiniLM) asks at the job's limit,
// the job runs, is verified and completes, and the studio sees it completed with its
// verification and downloads the output (every custom_id once, a 384-dimension embedding
// each); a provider registers a node in the browser, places, amends and cancels an ask (that
// node's hardware challenge is marked passed in PostgreSQL: the agent above runs the real one);
// the protocol page; a 390 px screenshot; labels on
// every form control (axe-core); no console errors, page errors or failed requests.
//
// Needs: `eval "$(cargo xtask env)"`, the debug binaries (`cargo build -p matching-engine
// -p gridbook-settlement -p gridbook-api -p executor --bins`), `npm ci && npm run build` in web/, psql,
// /usr/bin/chromium. Screenshots: web/artifacts/*.png (git-ignored).

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';
import { root, startStack, natsPublish, until, sleep, sql, target } from './stack.mjs';

const MARKET = 'EMBED-MINILM-L6';
const CHROMIUM = process.env.GRIDBOOK_CHROMIUM ?? '/usr/bin/chromium';
const web = path.join(root, 'web');
const build = path.join(web, 'build');
const shots = path.join(web, 'artifacts');
const run = Date.now().toString(36);
const PASSWORD = 'correct horse battery staple';
const require = createRequire(import.meta.url);

// Raw engine orders (what the API's outbox sends), with ids and accounts far above the ones the
// API allocates for its users' orders in this fresh database.
const RAW = 1_000_000_000;
const BUYER = RAW + 1, SELLER = RAW + 2;
const place = (id, side, price, qty) => ({
  place: { id: RAW + id, account: side === 'bid' ? BUYER : SELLER, side, price, qty, tif: 'gtc' },
});

/** A persistent NATS publisher for the load phase. */
async function publisher(port) {
  const sock = net.connect(port, '127.0.0.1');
  let buf = '';
  sock.on('data', (d) => { buf += d.toString(); });
  await until('NATS INFO', () => /^INFO /.test(buf), 5_000);
  sock.write('CONNECT {"verbose":false,"pedantic":false,"name":"web-ui-load"}\r\n');
  return {
    pub(subject, payloads) {
      let out = '';
      for (const p of payloads) { const b = JSON.stringify(p); out += `PUB ${subject} ${Buffer.byteLength(b)}\r\n${b}\r\n`; }
      sock.write(out);
    },
    async flush() { buf = ''; sock.write('PING\r\n'); await until('NATS PONG', () => /PONG/.test(buf), 10_000); assert.ok(!/-ERR/.test(buf), buf); },
    close() { sock.end(); },
  };
}

function pct(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

async function main() {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (cargo xtask test does)`);
  if (!fs.existsSync(path.join(build, 'index.html'))) throw new Error(`${build}/index.html is missing: run \`npm run build\` in web/`);
  fs.mkdirSync(shots, { recursive: true });
  const stack = await startStack({ webDir: build });
  const { api, natsPort, dbUrl } = stack;
  const cmd = (payloads) => natsPublish(natsPort, `market.${MARKET}.cmd`, payloads);
  let browser;
  try {
    // The types were generated from the document the API serves.
    const served = await (await fetch(`${api}/openapi.json`)).json();
    const committed = JSON.parse(fs.readFileSync(path.join(web, 'openapi.json'), 'utf8'));
    assert.deepEqual(committed, served, 'web/openapi.json is stale: run `npm run openapi` in web/ and commit it');

    // An admin (the CLI), to credit the studio.
    const adminEmail = `web-admin-${run}@example.com`;
    execFileSync(path.join(target, process.env.GRIDBOOK_WEB_TEST_PROFILE ?? 'debug', 'gridbook-api'), ['create-admin', '--email', adminEmail], {
      env: { ...process.env, GRIDBOOK_ADMIN_PASSWORD: PASSWORD, GRIDBOOK_DATABASE_URL: dbUrl, RUST_LOG: 'warn' }, stdio: ['ignore', 'ignore', 'inherit'],
    });
    const login = await fetch(`${api}/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: adminEmail, password: PASSWORD }) });
    assert.equal(login.status, 200, await login.clone().text());
    const adminCookie = login.headers.get('set-cookie').split(';')[0];

    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const problems = [];
    const watch = (page) => {
      page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
      page.on('pageerror', (e) => problems.push(`pageerror: ${e}`));
      page.on('response', (r) => { if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.request().method()} ${r.url()}`); });
      page.on('requestfailed', (r) => problems.push(`requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
    };
    const page = await context.newPage();
    watch(page);
    const axe = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
    const checkLabels = async (name) => {
      await page.addScriptTag({ content: axe });
      const r = await page.evaluate(async () => window.axe.run(document, { runOnly: ['label', 'select-name', 'button-name', 'link-name', 'aria-input-field-name'] }));
      assert.deepEqual(r.violations.map((v) => `${v.id}: ${v.nodes.map((n) => n.target).join(' ')}`), [], `${name}: unlabelled controls`);
    };

    // Markets.
    await page.goto(`${api}/#/markets`);
    await page.locator('[data-testid="markets"] tbody tr').first().waitFor();
    assert.deepEqual(await page.locator('[data-testid="markets"] tbody tr td:first-child').allTextContents(),
      ['EMBED-MINILM-L6', 'GRID-CREDITS', 'RENDER-SD15-512', 'RENDER-TERRAIN-128']);
    await page.screenshot({ path: path.join(shots, 'markets.png'), fullPage: true });

    // Trader: the book moves on orders.
    await page.goto(`${api}/#/market/${MARKET}`);
    await page.locator('[data-testid="conn"][data-state="live"]').waitFor({ timeout: 20_000 });
    await cmd([place(1, 'ask', 510, 7), place(2, 'ask', 520, 4), place(3, 'bid', 490, 5), place(4, 'bid', 480, 2), place(5, 'bid', 490, 1)]);
    const row = (side, price) => page.locator(`#${side}s tr[data-price="${price}"]`);
    await until('the ladder to show the orders', async () =>
      (await row('bid', 490).count()) === 1 && (await row('ask', 520).count()) === 1 && (await row('bid', 480).count()) === 1);
    assert.deepEqual((await row('ask', 510).locator('td').allTextContents()).slice(0, 3), ['510', '7', '1']);
    assert.deepEqual((await row('bid', 490).locator('td').allTextContents()).slice(0, 3), ['490', '6', '2']);
    assert.equal(await page.locator('#spread').textContent(), '20');
    // A crossing bid: a fill at the ask's price on the tape, in the last price and the candles.
    await cmd(place(6, 'bid', 515, 3));
    await until('the fill', async () => (await row('ask', 510).locator('td').nth(1).textContent()) === '4');
    await until('the tape', async () => (await page.locator('#tape tr').count()) === 1);
    assert.deepEqual((await page.locator('#tape tr td').allTextContents()).slice(1), ['510', '3', 'buy']);
    assert.equal(await page.locator('#last').textContent(), '510');
    await until('the candles', async () => (await page.locator('#candles').getAttribute('data-volume')) === '3', 15_000);
    // A gap: the state shows resync, then a fresh snapshot brings the right book.
    await page.evaluate(() => { window.gridbook.book.seq -= 3; });
    await cmd({ cancel: { id: RAW + 2, account: SELLER } });
    await until('a resync', async () => (await page.evaluate(() => window.gridbook.resyncs)) === 1);
    await page.locator('[data-testid="conn"][data-state="live"]').waitFor({ timeout: 10_000 });
    await until('the cancel after the resync', async () => (await row('ask', 520).count()) === 0);
    const book = await (await fetch(`${api}/v1/markets/${MARKET}/book`)).json();
    assert.equal(Number(await page.locator('#seq').textContent()), book.seq);
    await checkLabels('market');
    await page.screenshot({ path: path.join(shots, 'market.png'), fullPage: true });

    // 1,000 book updates per second for 3 s: resting orders placed and cancelled far from the
    // touch (each command changes one level), 50 every 50 ms.
    const load = await publisher(natsPort);
    await page.evaluate(() => { window.gridbook.frames.length = 0; window.gridbook.work.length = 0; window.gridbook.messages = 0; });
    const seq0 = book.seq;
    let oid = 10_000;
    const t0 = Date.now();
    for (let tick = 0; tick < 60; tick++) {
      const batch = [];
      for (let i = 0; i < 50; i++) {
        const n = tick * 50 + i;
        if (n % 2 === 0) batch.push(place(oid++, 'bid', 300 + (n % 97), 1 + (n % 5)));
        else batch.push({ cancel: { id: RAW + oid - 1, account: BUYER } });
      }
      load.pub(`market.${MARKET}.cmd`, batch);
      const wait = t0 + (tick + 1) * 50 - Date.now();
      if (wait > 0) await sleep(wait);
    }
    await load.flush();
    load.close();
    const sent = 3000;
    await until('the feed to catch up', async () => (await page.evaluate(() => window.gridbook.book.seq)) >= seq0 + sent, 30_000);
    const elapsed = (Date.now() - t0) / 1000;
    const { frames, work, messages, resyncs } = await page.evaluate(() => ({ ...window.gridbook, book: undefined }));
    assert.equal(resyncs, 1, 'no resync under load');
    const p50 = pct(frames, 50), p99 = pct(frames, 99);
    console.log(`ladder at ${(sent / elapsed).toFixed(0)} book updates/s (${sent} in ${elapsed.toFixed(2)} s, ${messages} WebSocket messages, ${frames.length} frames): ` +
      `frame interval p50 ${p50.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms; DOM work per frame p50 ${pct(work, 50).toFixed(2)} ms, p99 ${pct(work, 99).toFixed(2)} ms ` +
      `(target: p99 interval under 50 ms; ratio ${(p99 / 50).toFixed(2)})`);

    // Studio: sign up, credit, upload, estimate, submit, see the job and its bid on the book.
    const studioEmail = `web-studio-${run}@example.com`;
    await page.goto(`${api}/#/studio`);
    await page.getByLabel('Email').waitFor();
    await checkLabels('sign-in');
    await page.getByLabel('Email').fill(studioEmail);
    await page.getByLabel('Password (12+ characters)').fill(PASSWORD);
    await page.locator('#studio-signup').click();
    await page.locator('[data-testid="balance"]').waitFor();
    const me = await page.evaluate(async () => (await fetch('/v1/me')).json());
    const credit = await fetch(`${api}/v1/admin/credits`, { method: 'POST', headers: { 'content-type': 'application/json', cookie: adminCookie },
      body: JSON.stringify({ user_id: me.id, amount: 1_000_000, reference: `web-test-${run}` }) });
    assert.equal(credit.status, 201, await credit.clone().text());
    const lines = Array.from({ length: 20 }, (_, i) => JSON.stringify({ custom_id: `r${i}`, input: `sentence number ${i}` })).join('\n') + '\n';
    await page.getByLabel('Input (JSONL, one request a line)').setInputFiles({ name: 'batch.jsonl', mimeType: 'application/jsonl', buffer: Buffer.from(lines) });
    await page.getByLabel('Limit price (credits per unit)').fill('495');
    await until('the estimate', async () => /units \(20 lines\)/.test(await page.locator('#job-estimate').textContent()));
    await page.getByRole('button', { name: 'Submit job' }).click();
    await until('the job in the list', async () => (await page.locator('[data-testid="jobs"] tbody tr').count()) === 1, 15_000);
    await until('the balance to show the hold', async () => !/held for open orders\s*0$/m.test(await page.locator('[data-testid="balance"]').innerText()), 15_000);
    await checkLabels('studio');
    await page.screenshot({ path: path.join(shots, 'studio.png'), fullPage: true });
    await page.locator('[data-testid="jobs"] tbody tr a').first().click();
    await page.getByText('requests').first().waitFor();
    await page.screenshot({ path: path.join(shots, 'job.png'), fullPage: true });
    await page.goto(`${api}/#/market/${MARKET}`);
    await until('the studio bid on the ladder', async () => (await row('bid', 495).count()) === 1, 15_000);
    await page.goto(`${api}/#/studio`);
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('Email').waitFor();

    // A provider with a real executor agent asks 1 unit at 495: only the studio's bid is that
    // high (the raw bids rest at 490 and lower), so the job's one unit fills on its node.
    const agentEmail = `web-agent-${run}@example.com`;
    const signup = await fetch(`${api}/v1/accounts`, { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email: agentEmail, password: PASSWORD, role: 'provider' }) });
    assert.equal(signup.status, 201, await signup.clone().text());
    const agentLogin = await fetch(`${api}/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email: agentEmail, password: PASSWORD }) });
    assert.equal(agentLogin.status, 200, await agentLogin.clone().text());
    const made = await fetch(`${api}/v1/keys`, { method: 'POST', headers: { 'content-type': 'application/json', cookie: agentLogin.headers.get('set-cookie').split(';')[0] },
      body: JSON.stringify({ name: 'web test agent' }) });
    assert.equal(made.status, 201, await made.clone().text());
    const agentStarted = Date.now();
    stack.agent({ name: `web-agent-${run}`, key: (await made.json()).key, market: MARKET, price: 495, qty: 1 });

    // Provider: sign up, register a node, (challenge marked passed), place, amend, cancel.
    await page.goto(`${api}/#/provider`);
    await page.getByLabel('Email').fill(`web-provider-${run}@example.com`);
    await page.getByLabel('Password (12+ characters)').fill(PASSWORD);
    await page.locator('#provider-signup').click();
    await page.getByLabel('Node name').fill(`web-node-${run}`);
    await page.getByRole('button', { name: 'Register node' }).click();
    await until('the node', async () => /pending/.test(await page.locator('[data-testid="nodes"]').innerText()), 10_000);
    sql(dbUrl, `UPDATE nodes SET challenge_status = 'passed' WHERE name = 'web-node-${run}'`);
    await page.reload();
    await until('the node passed', async () => /passed/.test(await page.locator('#ask-node').innerText()), 10_000);
    await page.getByLabel('Price (credits per unit)').fill('530');
    await page.getByLabel('Units', { exact: true }).fill('2');
    await page.getByRole('button', { name: 'Place ask' }).click();
    await until('the ask in the list', async () => (await page.locator('#ask-list tbody tr').count()) === 1, 10_000);
    await until('the ask on the book', async () => /ask\s+530\s+2/.test(await page.locator('#provider-book').innerText()), 15_000);
    const amend = page.locator('#ask-list form');
    await amend.locator('input').first().fill('535');
    await amend.locator('input').nth(1).fill('3');
    await amend.getByRole('button', { name: 'Amend' }).click();
    await until('the amended ask on the book', async () => /ask\s+535\s+3/.test(await page.locator('#provider-book').innerText()), 15_000);
    await checkLabels('provider');
    await page.screenshot({ path: path.join(shots, 'provider.png'), fullPage: true });
    await page.locator('#ask-list').getByRole('button', { name: 'Cancel' }).click();
    await until('the ask closed', async () => /closed/.test(await page.locator('#ask-list').innerText()), 15_000);
    await until('the ask off the book', async () => !/ask\s+535/.test(await page.locator('[data-testid="book"]').innerText()), 15_000);

    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('Email').waitFor();

    // The studio again: its job ran on the agent's node, was verified and completed; the job
    // page shows the verification, and the output downloads with every custom_id once.
    await page.goto(`${api}/#/studio`);
    await page.getByLabel('Email').fill(studioEmail);
    await page.getByLabel('Password (12+ characters)').fill(PASSWORD);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await until('the job completed in the list', async () =>
      /completed/.test(await page.locator('[data-testid="jobs"] tbody tr').first().innerText()), 180_000);
    console.log(`studio job completed in the browser ${((Date.now() - agentStarted) / 1000).toFixed(1)} s after the provider's agent started (registration, hardware challenge, ask, run, verification)`);
    assert.match(await page.locator('[data-testid="jobs"] tbody tr').first().innerText(), /100 %/);
    // Succeeded 20, failed 0, running 0, queued 0 (the list's count columns, in order).
    assert.deepEqual((await page.locator('[data-testid="jobs"] tbody tr').first().locator('td').allTextContents()).slice(4, 9), ['20', '20', '0', '0', '0']);
    await page.locator('[data-testid="jobs"] tbody tr a').first().click();
    await until('the verification on the job page', async () => /passed/.test(await page.locator('section').innerText()), 15_000);
    // The assignment: on the agent's node (a CPU node in region local), 1 unit, lines 1–20, at 495.
    assert.deepEqual((await page.locator('[data-testid="assignments"] tbody tr td').allTextContents()).slice(2), ['local', 'cpu', '1', '1–20', '495', 'completed']);
    const download = page.getByRole('link', { name: 'Download output' });
    await download.waitFor();
    const [file] = await Promise.all([page.waitForEvent('download'), download.click()]);
    const got = fs.readFileSync(await file.path(), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(got.map((o) => o.custom_id).sort(), Array.from({ length: 20 }, (_, i) => `r${i}`).sort(), 'the output holds every custom_id once');
    for (const o of got) assert.equal(o.embedding?.length, 384, `${o.custom_id}: a 384-dimension embedding`);
    await page.screenshot({ path: path.join(shots, 'job-completed.png'), fullPage: true });
    await page.goto(`${api}/#/studio`);
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('Email').waitFor();

    // Protocol.
    await page.goto(`${api}/#/protocol`);
    await page.locator('[data-testid="supply"] table').waitFor();
    await page.locator('[data-testid="fees"] table').waitFor();
    await page.screenshot({ path: path.join(shots, 'protocol.png'), fullPage: true });

    // Phone width.
    const phone = await context.newPage();
    watch(phone);
    await phone.setViewportSize({ width: 390, height: 844 });
    await phone.goto(`${api}/#/market/${MARKET}`);
    await phone.locator('[data-testid="conn"][data-state="live"]').waitFor({ timeout: 20_000 });
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than a 390 px screen`);
    await phone.screenshot({ path: path.join(shots, 'market-390.png'), fullPage: true });

    // Keyboard: Tab reaches the navigation links.
    await page.goto(`${api}/#/markets`);
    await page.keyboard.press('Tab');
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Markets');

    assert.deepEqual(problems, [], 'console errors, page errors or failed requests');
    console.log(`web UI test passed; screenshots in ${shots}`);
  } finally {
    await browser?.close();
    await stack.stop();
  }
}

main().then(() => process.exit(0), (e) => { console.error(`web UI test FAILED: ${e.stack ?? e}`); process.exit(1); });
