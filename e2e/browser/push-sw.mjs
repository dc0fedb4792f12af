// Drives headless Chromium against the web app's push pieces (web/push): the service worker
// receives a push event carrying the payload tim-push-gateway produced (delivered through the
// DevTools protocol, since headless Chromium has no push service) and must show a notification
// without content; the subscription JSON of a browser must map to the pusher the gateway reads.
//
// Usage: node push-sw.mjs <input.json>   input: {payload, subscription, gateway_url}
// Prints one JSON line: {pusher, notifications}. Exits non-zero on failure.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = fileURLToPath(new URL('.', import.meta.url));
const webPush = join(here, '..', '..', 'web', 'push');
const input = JSON.parse(readFileSync(process.argv[2], 'utf8'));

const files = {
  '/': join(here, 'index.html'),
  '/push-sw.js': join(webPush, 'push-sw.js'),
  '/subscription.js': join(webPush, 'subscription.js'),
};
const types = { '.html': 'text/html', '.js': 'text/javascript' };
const server = createServer((req, res) => {
  const file = files[req.url];
  if (!file) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'content-type': types[extname(file)] || 'text/html' });
  res.end(readFileSync(file));
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
// Service workers need a secure context: localhost is one.
const origin = `http://localhost:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--headless=new'],
});
let failed = null;
try {
  const context = await browser.newContext();
  await context.grantPermissions(['notifications'], { origin });
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  const registrations = [];
  cdp.on('ServiceWorker.workerRegistrationUpdated', (e) => registrations.push(...e.registrations));
  await cdp.send('ServiceWorker.enable');
  await page.goto(origin + '/');
  await page.evaluate(() => window.swReady);

  const pusher = await page.evaluate(
    async ([sub, gatewayUrl]) => {
      const m = await import('/subscription.js');
      const key = m.vapidKeyBytes('BPhd0f3Pj3sT3ZIKe9SAJZFs-XIJ_n2tWc-rqOYuOtyyYJDgaq8Ksr3dZ1ma_zHwuFRzbRaCCzfOWz1LfhXHkIc');
      if (key.length !== 65 || key[0] !== 4) throw new Error('VAPID key bytes wrong');
      let refused = false;
      try {
        m.pusherFor({ endpoint: 'https://x' }, { gatewayUrl, appId: 'de.tim.web' });
      } catch (_) {
        refused = true;
      }
      if (!refused) throw new Error('a subscription without keys was accepted');
      return m.pusherFor(sub, {
        gatewayUrl,
        appId: 'de.tim.web',
        appName: 'TI-Messenger Web',
        deviceName: 'Chromium',
      });
    },
    [input.subscription, input.gateway_url],
  );

  const deadline = Date.now() + 10000;
  while (!registrations.some((r) => r.scopeURL === origin + '/') && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  const registration = registrations.find((r) => r.scopeURL === origin + '/');
  if (!registration) throw new Error('service worker registration not reported');
  // A push reaches only an activated worker: wait for it, and deliver again while nothing
  // shows (a push delivered during activation can be lost on a busy machine).
  await page.evaluate(async () => {
    await navigator.serviceWorker.ready;
  });
  const push = () =>
    cdp.send('ServiceWorker.deliverPushMessage', {
      origin,
      registrationId: registration.registrationId,
      data: JSON.stringify(input.payload),
    });
  await push();
  let lastPush = Date.now();
  const shownBy = Date.now() + 20000;
  let notifications = [];
  while (notifications.length === 0 && Date.now() < shownBy) {
    if (Date.now() - lastPush > 2000) {
      await push();
      lastPush = Date.now();
    }
    notifications = await page.evaluate(async () => {
      const reg = await navigator.serviceWorker.ready;
      return (await reg.getNotifications()).map((n) => ({
        title: n.title,
        body: n.body,
        tag: n.tag,
        data: n.data,
      }));
    });
    if (notifications.length === 0) await new Promise((r) => setTimeout(r, 50));
  }
  if (notifications.length === 0) throw new Error('the service worker showed no notification');
  console.log(JSON.stringify({ pusher, notifications }));
} catch (e) {
  failed = e;
} finally {
  await browser.close();
  server.close();
}
if (failed) {
  console.error(failed.stack || String(failed));
  process.exit(1);
}
