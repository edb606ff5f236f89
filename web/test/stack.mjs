// The real stack for the browser test (and `npm run openapi`): a private nats-server with
// JetStream, the matching engine serving dev.toml's markets, the settlement worker and the API
// (serving the built app from web/build); `agent()` adds a provider's executor agent (real ONNX
// Runtime and model). Debug binaries from $CARGO_TARGET_DIR (or target/).
//
// Needs GRIDBOOK_NATS_SERVER_BIN and GRIDBOOK_DATABASE_URL (`eval "$(cargo xtask env)"`); the
// agent also ORT_DYLIB_PATH and GRIDBOOK_MODELS_DIR (the same command sets them).

import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(here, '../..');
export const target = process.env.CARGO_TARGET_DIR ? path.resolve(process.env.CARGO_TARGET_DIR) : path.join(root, 'target');
const profile = process.env.GRIDBOOK_WEB_TEST_PROFILE ?? 'debug';

export function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run under \`cargo xtask test\` or eval "$(cargo xtask env)"`);
  return v;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
    s.on('error', reject);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function until(what, fn, ms = 30_000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try { const v = await fn(); if (v) return v; } catch (e) { last = e; }
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

export const PSQL = process.env.GRIDBOOK_PSQL ?? 'psql';

/** Runs one SQL statement with psql against `url`. */
export function sql(url, statement) {
  execFileSync(PSQL, [url, '-v', 'ON_ERROR_STOP=1', '-qc', statement], { stdio: ['ignore', 'ignore', 'inherit'] });
}

/** Starts the stack on a fresh database (dropped by `stop`); returns { api, natsPort, dbUrl, dir, stop }. */
export async function startStack({ webDir } = {}) {
  const natsBin = need('GRIDBOOK_NATS_SERVER_BIN');
  const baseUrl = need('GRIDBOOK_DATABASE_URL');
  const dbName = `gridbook_web_${process.pid}_${Date.now().toString(36)}`;
  sql(baseUrl, `CREATE DATABASE "${dbName}"`);
  const u = new URL(baseUrl);
  u.pathname = `/${dbName}`;
  const dbUrl = u.toString();
  const children = [];
  let stopping = false;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gridbook-web-test-'));
  const start = (name, bin, args, env) => {
    if (!fs.existsSync(bin)) throw new Error(`${bin} is missing: build it first (cargo build -p matching-engine -p gridbook-settlement -p gridbook-api --bins)`);
    const log = fs.openSync(path.join(dir, `${name}.log`), 'w');
    const child = spawn(bin, args, { env: { ...process.env, ...env }, stdio: ['ignore', log, log] });
    children.push(child);
    child.on('exit', (code, sig) => { if (!stopping) console.error(`${name} exited early: ${code ?? sig} (log: ${path.join(dir, name + '.log')})`); });
    return child;
  };
  const stop = async () => {
    stopping = true;
    const exits = children.filter((c) => c.exitCode === null && c.signalCode === null).map((c) => new Promise((r) => { c.once('exit', r); c.kill('SIGKILL'); }));
    await Promise.all(exits);
    try { sql(baseUrl, `DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`); } catch (e) { console.error(`dropping ${dbName}: ${e.message}`); }
  };
  try {
    const natsPort = await freePort();
    fs.writeFileSync(path.join(dir, 'nats.conf'),
      `listen: 127.0.0.1:${natsPort}\nmax_payload: 8MB\njetstream {\n  store_dir: "${path.join(dir, 'js')}"\n}\n`);
    start('nats-server', natsBin, ['-c', path.join(dir, 'nats.conf')], {});
    const natsUrl = `nats://127.0.0.1:${natsPort}`;
    const devToml = path.join(root, 'matching-engine/engine/config/dev.toml');
    await until('nats-server', () => new Promise((r) => { const s = net.connect(natsPort, '127.0.0.1', () => { s.end(); r(true); }); s.on('error', () => r(false)); }));
    const bin = (n) => path.join(target, profile, n);
    start('matching-engine', bin('matching-engine'), ['run', '--config', devToml], { GRIDBOOK_NATS_URL: natsUrl, RUST_LOG: 'warn' });
    const apiPort = await freePort();
    const common = { GRIDBOOK_NATS_URL: natsUrl, GRIDBOOK_DATABASE_URL: dbUrl, GRIDBOOK_MARKETS_FILE: devToml };
    start('gridbook-api', bin('gridbook-api'), ['run'], {
      ...common,
      GRIDBOOK_BIND: `127.0.0.1:${apiPort}`,
      ...(webDir ? { GRIDBOOK_WEB_DIR: webDir } : {}),
      GRIDBOOK_SECURE_COOKIES: 'false',
      RUST_LOG: 'info',
    });
    const api = `http://127.0.0.1:${apiPort}`;
    await until('the API and its feed', async () => {
      const r = await fetch(`${api}/v1/markets/EMBED-MINILM-L6`);
      return r.ok && (await r.json()).seq !== null;
    }, 60_000);
    // After the API has migrated the database (both would otherwise migrate at once).
    start('settlement-worker', bin('settlement-worker'), ['run'], { ...common, GRIDBOOK_OUTBOX_INTERVAL_MS: '100', RUST_LOG: 'warn' });
    /** Starts `executor agent` for the provider whose API key is `key`, with a fixed ask of
     *  `qty` units at `price` on `market` (it registers, passes the hardware challenge, asks). */
    const agent = ({ name, key, market, price, qty }) => {
      need('ORT_DYLIB_PATH');
      need('GRIDBOOK_MODELS_DIR');
      const keyFile = path.join(dir, `${name}.key`);
      fs.writeFileSync(keyFile, key, { mode: 0o600 });
      const config = path.join(dir, `${name}.toml`);
      fs.writeFileSync(config, `api_url = "${api}"\nnats_url = "${natsUrl}"\nstate_file = "${path.join(dir, name + '.state.json')}"\n` +
        `name = "${name}"\ngpu_model = "cpu"\nvram_mb = 0\nregion = "local"\nheartbeat_secs = 5\nmax_concurrent = 1\ngrace_secs = 5\npricing_poll_secs = 5\n\n` +
        `[markets.${market}]\nkind = "fixed"\nprice = ${price}\nqty = ${qty}\n`);
      return start(name, bin('executor'),
      // The flags, not the config file: $GRIDBOOK_NATS_URL (from `cargo xtask env`) names the
      // tests' shared nats-server and would override the file.
      ['--threads', '1', 'agent', '--api', api, '--nats', natsUrl, '--key-file', keyFile, '--node-config', config], { RUST_LOG: 'info' });
    };
    return { api, natsPort, dbUrl, dir, stop, agent };
  } catch (e) {
    await stop();
    throw e;
  }
}

// Core NATS publish over the text protocol; JetStream stores it (the subject is the stream's).
export async function natsPublish(port, subject, payloads) {
  const sock = net.connect(port, '127.0.0.1');
  let buf = '';
  const waitFor = (re) => until(`NATS ${re}`, () => re.test(buf), 5_000);
  sock.on('data', (d) => { buf += d.toString(); });
  await waitFor(/^INFO /);
  sock.write('CONNECT {"verbose":false,"pedantic":false,"name":"web-ui-test"}\r\n');
  for (const p of Array.isArray(payloads) ? payloads : [payloads]) {
    const body = Buffer.from(JSON.stringify(p));
    sock.write(`PUB ${subject} ${body.length}\r\n`);
    sock.write(body);
    sock.write('\r\n');
  }
  sock.write('PING\r\n');
  await waitFor(/PONG/);
  if (/-ERR/.test(buf)) throw new Error(`NATS error: ${buf}`);
  sock.end();
}
