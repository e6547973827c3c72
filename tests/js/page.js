// The page the browser test loads: one SDK (`?sdk=`), pointed at Kith (`?kith=`, `?key=`), sends
// an identify, a track and a page. Bundled with esbuild by scripts/setup-js-kit.sh; it is
// served from another origin than Kith's, as a shop's pages are, so CORS is exercised too.
import { AnalyticsBrowser } from '@segment/analytics-next';
import { RudderAnalytics } from '@rudderstack/analytics-js/bundled';

const params = new URLSearchParams(location.search);
const kith = params.get('kith');
const writeKey = params.get('key');
const sdk = params.get('sdk');
const results = (window.results = { sdk, delivered: [], errors: [], done: false });

// Segment's analytics.js (analytics-next), loading its settings from Kith as it would from
// Segment's CDN. Each call's promise settles once the event was delivered or given up on.
async function segment() {
  const [analytics] = await AnalyticsBrowser.load({ writeKey, cdnURL: kith });
  const calls = [
    () => analytics.identify('seg-user', { email: 'eva@example.com', plan: 'pro' }, { messageId: 'seg-identify' }),
    () => analytics.track('Product Viewed', { sku: 'A-1', revenue: 10, currency: 'MXN' }, { messageId: 'seg-track' }),
    () => analytics.page('Docs', 'Pricing', {}, { messageId: 'seg-page' }),
  ];
  for (const call of calls) {
    const ctx = await call();
    const failed = ctx.failedDelivery();
    if (failed) {
      results.errors.push(`${ctx.event.messageId}: ${failed.reason}`);
    } else {
      results.delivered.push(ctx.event.messageId);
    }
  }
}

// RudderStack's JavaScript SDK v3, loading its source configuration from Kith (`configUrl`) and
// sending to Kith as its data plane, by XHR or (`beacon`) by navigator.sendBeacon.
function rudderstack(beacon) {
  return new Promise((resolve, reject) => {
    const rudder = new RudderAnalytics();
    const user = beacon ? 'rs-beacon-user' : 'rs-xhr-user';
    rudder.load(writeKey, kith, {
      configUrl: kith,
      useBeacon: beacon,
      beaconQueueOptions: { flushQueueInterval: 200 },
      onLoaded: () => results.delivered.push('loaded'),
    });
    rudder.ready(() => {
      rudder.identify(user, { email: `${user}@example.com`, plan: 'pro' });
      rudder.track('Checkout Started', { revenue: 25, currency: 'MXN' });
      rudder.page('Shop', 'Home');
      resolve();
    });
    setTimeout(() => reject(new Error('the SDK was not ready within 20 s')), 20000);
  });
}

const run = { segment, rudderstack: () => rudderstack(false), 'rudderstack-beacon': () => rudderstack(true) }[sdk];
Promise.resolve()
  .then(() => (run ? run() : Promise.reject(new Error(`unknown sdk ${sdk}`))))
  .catch((e) => results.errors.push(String((e && e.stack) || e)))
  .finally(() => {
    results.done = true;
  });
