// Drives Chromium through one SDK's page. Usage: node drive.mjs KITH_BASE WRITE_KEY SDK EXPECTED
// Serves the page (site/) from its own origin on loopback, loads it, and waits until EXPECTED
// requests to Kith have been answered (or 30 s). Prints JSON: the page's results, every request
// to Kith with its answer, requests that failed, and the console.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const [kith, writeKey, sdk, expected] = process.argv.slice(2);
const site = join(dirname(fileURLToPath(import.meta.url)), 'site');
const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8' };
const server = createServer(async (req, res) => {
  const path = new URL(req.url, 'http://page').pathname;
  const name = path === '/' ? 'index.html' : path.slice(1);
  try {
    const body = await readFile(join(site, name.replace(/[^a-z.]/g, '')));
    res.writeHead(200, { 'content-type': types[name.slice(name.lastIndexOf('.'))] ?? 'application/octet-stream' });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.KITH_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
const page = await browser.newPage();
const report = { origin, results: null, requests: [], failed: [], console: [] };
page.on('console', (m) => report.console.push(`${m.type()}: ${m.text()}`));
page.on('requestfailed', (r) => report.failed.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
page.on('response', (r) => {
  if (r.url().startsWith(kith)) report.requests.push(`${r.status()} ${r.request().method()} ${r.url().slice(kith.length)}`);
});
const query = new URLSearchParams({ kith, key: writeKey, sdk });
await page.goto(`${origin}/index.html?${query}`);
const deadline = Date.now() + 30000;
while (Date.now() < deadline) {
  const done = await page.evaluate(() => window.results && window.results.done);
  const posted = report.requests.filter((r) => r.includes(' POST ')).length;
  if (done && posted >= Number(expected)) break;
  await page.waitForTimeout(100);
}
report.results = await page.evaluate(() => window.results);
console.log(JSON.stringify(report));
await browser.close();
server.close();
