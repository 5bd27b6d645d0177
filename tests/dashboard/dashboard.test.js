// The dashboard end to end: real `meshsync run` processes on loopback, joined into a mesh by
// invite, and the page in headless Chromium (driven by playwright-core). Each test does in the
// page what an operator would and checks the outcome in the node's API. Screenshots of each view
// go to SCREENSHOTS_DIR (run.sh: target/dashboard-screenshots, or docs/screenshots for the README).
//
// Nodes: A ("till-1") is the node whose dashboard is under test. B joins A and is named
// `<img src=x onerror=alert(1)>`, so every place that shows a peer name is an XSS probe. D joins
// A as an admin, makes an invite and stops; C joins with D's invite, so C is a member that nobody dials until
// the operator adds its address in A's page. D stays in A's peer table as the peer that cannot
// be reached, with the reason.
//
// Run through run.sh, which installs Chromium and playwright-core: tests/dashboard/run.sh BINARY.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const BIN = process.env.MESHSYNC_BIN;
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = process.env.SCREENSHOTS_DIR;
const XSS_NAME = '<img src=x onerror=alert(1)>';
/** How long the mesh may take to connect or deliver, and the page to show it. */
const PATIENCE_MS = 20000;

const work = mkdtempSync(join(tmpdir(), 'meshsync-dashboard-'));
const nodes = [];

/** Starts `meshsync run` on free loopback ports; resolves once it has printed its addresses. */
function startNode(name, extra = []) {
  const dir = join(work, `node-${nodes.length}`);
  mkdirSync(dir);
  const child = spawn(BIN, ['run', '--data-dir', dir, '--api', '127.0.0.1:0', '--listen', '127.0.0.1:0',
    '--no-mdns', '--no-beacon', '--log', 'warn', '--name', name, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  const node = { name, dir, child, stderr: '' };
  nodes.push(node);
  child.stderr.on('data', (chunk) => { node.stderr = (node.stderr + chunk).slice(-4000); });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} printed no addresses in 30 s: ${node.stderr}`)), 30000);
    child.on('exit', (code) => reject(new Error(`${name} exited with ${code}: ${node.stderr}`)));
    createInterface({ input: child.stdout }).on('line', (raw) => {
      const line = raw.trim();
      const rest = (prefix) => line.slice(prefix.length).trim().split(/\s+/)[0];
      if (line.startsWith('device id')) node.device = rest('device id');
      else if (line.startsWith('peers on')) node.listen = rest('peers on');
      else if (line.startsWith('API')) node.api = rest('API').replace(/\/v1$/, '');
      else if (line.startsWith('dashboard')) {
        node.url = rest('dashboard');
        node.token = new URL(node.url).searchParams.get('token');
        clearTimeout(timer);
        resolve(node);
      }
    });
  });
}

function stopNode(node) {
  if (node.child.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    node.child.once('exit', resolve);
    node.child.kill('SIGTERM');
    setTimeout(() => node.child.kill('SIGKILL'), 10000).unref();
  });
}

/** Calls a node's API with its token; answers [status, body]. */
async function call(node, method, path, body) {
  const response = await fetch(`${node.api}${path}`, {
    method,
    headers: { Authorization: `Bearer ${node.token}`, ...(body === undefined ? {} : { 'Content-Type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return [response.status, text ? JSON.parse(text) : null];
}

async function get(node, path) {
  const [status, body] = await call(node, 'GET', path);
  assert.equal(status, 200, `GET ${path}: ${JSON.stringify(body)}`);
  return body;
}

async function eventually(what, check, ms = PATIENCE_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what} within ${ms} ms`);
    await new Promise((resolve) => { setTimeout(resolve, 100); });
  }
}

async function peerOf(node, device) {
  return (await get(node, '/v1/peers')).peers.find((p) => p.device_id === device);
}

let browser;
let page;
let a;
let b;
const dialogs = [];
const pageErrors = [];

async function shot(name, target = page, { fullPage = true } = {}) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  // The short confirmation toast would cover part of the view.
  await target.evaluate(() => { document.getElementById('notice').hidden = true; });
  await target.screenshot({ path: join(SHOTS, `${name}.png`), fullPage });
}

/** Collects what must never happen in a page: dialogs (an alert() from injected markup), script
 * errors and Content-Security-Policy violations. */
function watch(target) {
  target.on('dialog', async (dialog) => { dialogs.push(dialog.message()); await dialog.dismiss(); });
  target.on('pageerror', (error) => pageErrors.push(`page error: ${error.message}`));
  target.on('console', (message) => {
    if (message.type() === 'error' && !/Failed to load resource/.test(message.text())) {
      pageErrors.push(`console: ${message.text()}`);
    }
  });
}

async function openTab(id) {
  await page.click(`#tabs a[href="#${id}"]`);
  await page.waitForSelector(`#view-${id}:not([hidden])`);
}

describe('dashboard', { timeout: 240000 }, () => {
  before(async () => {
    assert.ok(BIN, 'MESHSYNC_BIN names the meshsync binary');
    a = await startNode('till-1');
    const [status, invite] = await call(a, 'POST', '/v1/invites', { ttl_s: 600 });
    assert.equal(status, 201, JSON.stringify(invite));
    b = await startNode(XSS_NAME, ['--join', invite.code]);
    await eventually('A and B connect', async () => (await peerOf(a, b.device))?.state === 'connected');

    // Data for the records browser: a counter both devices increment, and some plain records.
    assert.equal((await call(a, 'PUT', '/v1/schema/products', { fields: { stock: 'counter' } }))[0], 200);
    for (const [id, fields] of [['tea', { name: 'Tea', price: 2.5, kind: 'hot' }], ['coffee', { name: 'Coffee', price: 3, kind: 'hot' }],
      ['juice', { name: 'Orange juice', price: 3.2, kind: 'cold' }]]) {
      assert.equal((await call(a, 'PUT', `/v1/c/products/${id}`, fields))[0], 200);
    }
    await eventually('B has the schema and the products', async () => (await call(b, 'GET', '/v1/c/products/juice'))[0] === 200);
    assert.equal((await call(a, 'POST', '/v1/c/products/tea/incr', { field: 'stock', by: 10 }))[0], 200);
    assert.equal((await call(b, 'POST', '/v1/c/products/tea/incr', { field: 'stock', by: -2 }))[0], 200);
    assert.equal((await call(b, 'PUT', '/v1/c/customers/c-17', { name: 'Ana', visits: 3 }))[0], 200);

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      // Root in CI needs --no-sandbox; the rest keeps Chromium off the (closed) network.
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
    });
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    page = await context.newPage();
    watch(page);
  });

  after(async () => {
    await browser?.close();
    await Promise.all(nodes.map(stopNode));
    rmSync(work, { recursive: true, force: true });
    assert.deepEqual(pageErrors, [], 'no script errors or CSP violations in the page');
  });

  test('the page keeps the token for the tab and takes it out of the address', async () => {
    await page.goto(a.url);
    await page.waitForSelector('#app:not([hidden])');
    assert.ok(!page.url().includes('token='), `the address still holds the token: ${page.url()}`);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('meshsync.token')), a.token);
  });

  test('the page shows this device and its connected peer', async () => {
    await page.waitForFunction((id) => document.querySelector('#device-id')?.textContent === id, a.device);
    const card = page.locator('#view-overview');
    assert.equal(await card.locator('strong.device').textContent(), 'till-1');
    await card.locator('.peer-line', { hasText: XSS_NAME }).locator('.pill.connected').waitFor();
    assert.match(await card.textContent(), /1 connected of 1/);
  });

  test('a peer named <img src=x onerror=alert(1)> is shown as text', async () => {
    // The literal text is on the page, in the overview and the peers table ...
    const names = page.locator('.peer-name', { hasText: XSS_NAME });
    assert.ok(await names.count() >= 1);
    assert.equal(await names.first().textContent(), XSS_NAME);
    await openTab('peers');
    await page.locator('#peer-table .peer-name', { hasText: XSS_NAME }).waitFor();
    await openTab('members');
    await page.locator('#member-table .peer-name', { hasText: XSS_NAME }).waitFor();
    // ... and no element was made of it, and nothing ran.
    assert.equal(await page.locator('img[src="x"]').count(), 0);
    assert.equal(await page.evaluate(() => document.querySelectorAll('main img:not(.qr)').length), 0);
    assert.deepEqual(dialogs, []);
  });

  test('adding a static peer from the form connects it', async () => {
    // D joins A as an admin and makes an invite; C joins with it after D has stopped, so no one
    // dials C (and C's membership is proven by the chain D -> A).
    const [, inviteA] = await call(a, 'POST', '/v1/invites', { role: 'admin' });
    const d = await startNode('old-laptop', ['--join', inviteA.code]);
    const [status, inviteD] = await call(d, 'POST', '/v1/invites', {});
    assert.equal(status, 201);
    await eventually('A meets D', async () => (await peerOf(a, d.device))?.state === 'connected');
    await stopNode(d);
    const c = await startNode('warehouse-pc', ['--join', inviteD.code]);
    await new Promise((resolve) => { setTimeout(resolve, 1000); });
    assert.notEqual((await peerOf(a, c.device))?.state, 'connected', 'C is not connected before the form');

    await openTab('peers');
    const input = page.locator('#peer-addr');
    await input.fill('not an address');
    await page.click('#add-peer button[type=submit]');
    assert.match(await page.locator('#peer-addr-help.invalid').textContent(), /host:port/);
    await input.fill(c.listen);
    await page.click('#add-peer button[type=submit]');
    await page.locator('#peer-table tr', { hasText: 'warehouse-pc' }).locator('.pill.connected').waitFor({ timeout: PATIENCE_MS });
    const inApi = await peerOf(a, c.device);
    assert.equal(inApi.state, 'connected');
    assert.ok(inApi.sources.includes('static'), JSON.stringify(inApi));
    assert.ok((await get(a, '/v1/config')).peers.includes(c.listen), 'saved in the settings');
    // D, stopped, stays listed with the reason it cannot be reached.
    await eventually('A says why D cannot be reached', async () => (await peerOf(a, d.device))?.last_error);
    await page.locator('#peer-table tr', { hasText: 'old-laptop' }).locator('.why').waitFor({ timeout: PATIENCE_MS });
    // A connection test from the page.
    await page.locator('#peer-table tr', { hasText: 'warehouse-pc' }).locator('button', { hasText: 'Test' }).click();
    await page.locator('#peer-table tr', { hasText: 'warehouse-pc' }).locator('.test-result .ok').waitFor({ timeout: PATIENCE_MS });
    await shot('peers');
  });

  test('resolving a conflict in the page resolves it in the API', async () => {
    // A real conflict: both nodes write the same field while neither sends, then both resume.
    for (const node of [a, b]) assert.equal((await call(node, 'POST', '/v1/sync/pause'))[0], 200);
    await new Promise((resolve) => { setTimeout(resolve, 500); });
    assert.equal((await call(a, 'PUT', '/v1/c/products/tea', { name: 'Green tea' }))[0], 200);
    assert.equal((await call(b, 'PUT', '/v1/c/products/tea', { name: 'Black tea' }))[0], 200);
    for (const node of [a, b]) assert.equal((await call(node, 'POST', '/v1/sync/resume'))[0], 200);
    const conflict = await eventually('A sees the conflict',
      async () => (await get(a, '/v1/conflicts')).conflicts.find((c) => c.record === 'tea' && c.field === 'name'));

    await openTab('conflicts');
    const card = page.locator(`article.conflict[data-id="${conflict.id}"]`);
    await card.waitFor({ timeout: PATIENCE_MS });
    const text = await card.textContent();
    for (const value of ['Green tea', 'Black tea']) assert.ok(text.includes(value), `${value} in ${text}`);
    assert.ok(text.includes(XSS_NAME) || text.includes('till-1'), 'the writers are named');
    await shot('conflicts');
    await card.locator('button', { hasText: 'Use this' }).click();
    await card.waitFor({ state: 'detached', timeout: PATIENCE_MS });

    const left = (await get(a, '/v1/conflicts')).conflicts.filter((c) => c.id === conflict.id);
    assert.deepEqual(left, [], 'resolved in the API');
    const tea = await get(a, '/v1/c/products/tea');
    assert.equal(tea.fields.name, conflict.lost.value, 'the chosen (lost) value was written');
    await eventually('B converges on the chosen value', async () => (await get(b, '/v1/c/products/tea')).fields.name === conflict.lost.value);
  });

  test('an invite QR code renders', async () => {
    await openTab('members');
    await page.selectOption('#invite-role', 'reader');
    await page.fill('#invite-scopes', 'warehouse:kitchen');
    await page.click('#invite-form button[type=submit]');
    const qr = page.locator('#invite-result img.qr');
    await qr.waitFor();
    await page.waitForFunction(() => document.querySelector('#invite-result img.qr')?.complete);
    const size = await qr.evaluate((img) => ({ natural: img.naturalWidth, shown: img.getBoundingClientRect().width }));
    assert.ok(size.natural > 0 && size.shown > 0, JSON.stringify(size));
    const code = await page.inputValue('#invite-code');
    assert.match(code, /^MSI2-/);
    assert.match(await page.locator('#invite-result').textContent(), /reader · scopes warehouse:kitchen/);
    await shot('members');
  });

  test('revoking asks first, keeps asking across a refresh, and shows what the node answered', async () => {
    await openTab('members');
    const row = page.locator('#member-table tr', { hasText: 'old-laptop' });
    await row.locator('button', { hasText: 'Revoke' }).click();
    await row.locator('.question').waitFor();
    await page.waitForTimeout(3500); // the table is read again every 3 s
    assert.equal(await row.locator('.question').count(), 1, 'the question survives the refresh');
    const device = await row.locator('code').getAttribute('title');
    await row.locator('button', { hasText: 'Yes' }).click();
    // The node signs the revocation; the member shows as revoked, and the API agrees.
    const revokedPill = '#member-table tr:has-text("old-laptop") .pill:has-text("revoked")';
    await page.locator(revokedPill).waitFor({ timeout: PATIENCE_MS });
    const member = (await get(a, '/v1/members')).members.find((m) => m.device_id === device);
    assert.equal(member?.revoked, true, JSON.stringify(member));
  });

  test('the records browser shows a record and who wrote each field', async () => {
    await openTab('records');
    await page.waitForFunction(() => [...document.querySelectorAll('#collection option')].some((o) => o.value === 'products'));
    await page.selectOption('#collection', 'products');
    await page.locator('#record-list .record-id', { hasText: 'juice' }).waitFor();
    await page.fill('#record-filter', 'kind=cold');
    await page.click('#record-form button[type=submit]');
    await page.waitForFunction(() => document.querySelectorAll('#record-list .record-id').length === 1);
    await page.fill('#record-filter', '');
    await page.click('#record-form button[type=submit]');
    await page.locator('#record-list .record-id', { hasText: 'tea' }).click();
    const detail = page.locator('#record-detail');
    await detail.locator('td', { hasText: 'counter' }).waitFor();
    const text = await detail.textContent();
    assert.ok(text.includes('sum of every device'), 'the counter shows its per-device totals');
    assert.ok(text.includes(XSS_NAME) || text.includes('till-1'), 'writers are named');
    await shot('records');
  });

  test('the sync view shows each peer\'s progress', async () => {
    // Some changes for the bars and rates to show.
    for (let i = 0; i < 40; i += 1) await call(b, 'PUT', `/v1/c/scans/s${i}`, { code: `P-${1000 + i}` });
    await openTab('sync');
    await page.locator('#view-sync progress').first().waitFor();
    await page.locator('#view-sync tr', { hasText: XSS_NAME }).locator('.pill.connected').waitFor();
    await page.waitForTimeout(3500); // one more poll, for the rates
    await shot('sync');
  });

  test('the live log shows events and filters them', async () => {
    await openTab('log');
    await call(a, 'PUT', '/v1/c/products/kiosk-note', { text: 'hello from the log test' });
    const lines = page.locator('#log-lines .line');
    await page.locator('#log-lines .line', { hasText: 'products/kiosk-note' }).waitFor();
    await page.fill('#log-filter', 'kiosk-note');
    const visible = await lines.evaluateAll((all) => all.filter((l) => !l.hidden).map((l) => l.textContent));
    assert.ok(visible.length >= 1 && visible.every((l) => l.toLowerCase().includes('kiosk-note')), JSON.stringify(visible));
    await page.fill('#log-filter', '');
    await shot('log');
  });

  test('the overview sums up the peers, and says why one cannot be reached', async () => {
    await openTab('overview');
    const card = page.locator('#view-overview');
    await card.locator('.peer-line', { hasText: 'old-laptop' }).locator('.why').waitFor({ timeout: PATIENCE_MS });
    await card.locator('.peer-line', { hasText: 'warehouse-pc' }).locator('.pill.connected').waitFor();
    assert.match(await card.textContent(), /2 connected of 3/);
    await shot('overview');
  });

  test('on a 390 px phone the page fits the screen; without a token it asks for one', async () => {
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    const small = await phone.newPage();
    watch(small);
    await small.goto(`${a.api}/`);
    await small.waitForSelector('#login:not([hidden])');
    await small.fill('#login-token', a.token);
    await small.click('#login-form button[type=submit]');
    await small.waitForFunction((id) => document.querySelector('#device-id')?.textContent === id, a.device);
    await small.locator('.peer-line .pill.connected').first().waitFor();
    const width = await small.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 390, `the page is ${width} px wide on a 390 px screen`);
    await shot('phone-overview', small, { fullPage: false });
    await small.click('#tabs a[href="#peers"]');
    await small.locator('#peer-table .pill.connected').first().waitFor();
    assert.ok(await small.evaluate(() => document.documentElement.scrollWidth) <= 390);
    await shot('phone-peers', small, { fullPage: false });
    await phone.close();
    assert.deepEqual(dialogs, []);
  });
});
