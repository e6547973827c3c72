// Sends every call with the real Node SDKs: Segment's @segment/analytics-node and RudderStack's
// @rudderstack/rudder-sdk-node. Usage: node send_node.mjs KITH_BASE WRITE_KEY. Prints JSON: errors.
import { Analytics } from '@segment/analytics-node';
import RudderAnalytics from '@rudderstack/rudder-sdk-node';

const [base, writeKey] = process.argv.slice(2);
const errors = [];
const when = new Date('2024-03-01T16:00:00Z');

const segment = new Analytics({ writeKey, host: base, maxRetries: 1 });
segment.on('error', (e) => errors.push(`segment: ${e?.reason ?? e?.code ?? e}`));
segment.identify({ userId: 'node-user', traits: { email: 'nico@example.com', plan: 'pro' }, messageId: 'node-identify' });
segment.track({ userId: 'node-user', event: 'Order Completed', properties: { revenue: 120.5, currency: 'MXN' }, timestamp: when, messageId: 'node-track' });
segment.page({ userId: 'node-user', category: 'Docs', name: 'Pricing', properties: { url: 'https://tienda.mx/precios' }, messageId: 'node-page' });
segment.screen({ userId: 'node-user', name: 'Payment', properties: { step: 3 }, messageId: 'node-screen' });
segment.group({ userId: 'node-user', groupId: 'acme', traits: { name: 'Acme' }, messageId: 'node-group' });
segment.alias({ userId: 'node-user', previousId: 'node-old-id', messageId: 'node-alias' });
await segment.closeAndFlush({ timeout: 20000 });

const rudder = new RudderAnalytics(writeKey, {
  dataPlaneUrl: base,
  retryCount: 0,
  errorHandler: (e) => errors.push(`rudderstack: ${e?.message ?? e}`),
});
rudder.identify({ userId: 'rs-node-user', traits: { email: 'rosa@example.com', plan: 'pro' }, messageId: 'rs-node-identify' });
rudder.track({ userId: 'rs-node-user', event: 'Order Completed', properties: { revenue: 80, currency: 'MXN' }, timestamp: when, messageId: 'rs-node-track' });
rudder.page({ userId: 'rs-node-user', category: 'Docs', name: 'Pricing', properties: { url: 'https://tienda.mx/precios' }, messageId: 'rs-node-page' });
rudder.screen({ userId: 'rs-node-user', name: 'Payment', properties: { step: 3 }, messageId: 'rs-node-screen' });
rudder.group({ userId: 'rs-node-user', groupId: 'acme', traits: { name: 'Acme' }, messageId: 'rs-node-group' });
rudder.alias({ userId: 'rs-node-user', previousId: 'rs-node-old-id', messageId: 'rs-node-alias' });
await rudder.flush();

console.log(JSON.stringify({ errors }));
