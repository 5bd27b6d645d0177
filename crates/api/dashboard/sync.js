// Sync: per peer, catch-up progress (from `sync.progress` events), lag, last acknowledgement and
// rates of changes in and out (from successive reads of /v1/sync/state); and this node's version
// vector.

import { ago, fill, h, pill, shortId, table } from './dom.js';

/** The latest `sync.progress` event per device. */
const progress = new Map();
/** Per device: the previous reading of its counters, and the rates derived from it. */
const rates = new Map();

let peersBox;
let vectorBox;
/** The /v1/sync/state reading the rates were last measured on. */
let measured = null;

function rate(perSecond) {
  if (perSecond == null) return '–';
  if (perSecond < 0.05) return '0/s';
  return perSecond >= 100 ? `${Math.round(perSecond)}/s` : `${Math.round(perSecond * 10) / 10}/s`;
}

/** Updates the rates from a fresh /v1/sync/state (counters only grow while a node runs). */
function measure(peers) {
  const now = performance.now();
  for (const peer of peers) {
    const before = rates.get(peer.device_id);
    const sample = { at: now, received: peer.received ?? 0, sent: peer.sent ?? 0, in: before?.in, out: before?.out };
    if (before && now - before.at >= 1000) {
      const seconds = (now - before.at) / 1000;
      sample.in = Math.max(0, (sample.received - before.received) / seconds);
      sample.out = Math.max(0, (sample.sent - before.sent) / seconds);
      rates.set(peer.device_id, sample);
    } else if (!before) {
      rates.set(peer.device_id, sample);
    }
  }
}

function bar(peer) {
  const event = progress.get(peer.device_id);
  const connected = peer.state === 'connected';
  const received = event?.received ?? 0;
  const remaining = event?.remaining ?? 0;
  // Only the batch that ends the first catch-up says so; the link's flag stays set after it.
  const caughtUp = peer.caught_up || event?.caught_up;
  const total = received + remaining;
  let percent = 0;
  let label = 'not connected';
  if (connected && caughtUp) {
    percent = 100;
    label = `caught up · ${peer.received ?? received} received`;
  } else if (connected) {
    percent = total > 0 ? Math.floor((100 * received) / total) : 0;
    label = total > 0 ? `catching up: ${received} of about ${total}` : 'starting…';
  }
  return h('div', { class: 'progress' },
    h('progress', { max: '100', value: String(percent), 'aria-label': `sync with ${peer.name ?? peer.device_id}` }),
    h('span', { class: 'progress-label', text: label }));
}

export default {
  id: 'sync',
  needs: ['peers', 'sync'],

  init(section) {
    peersBox = h('div');
    vectorBox = h('div');
    section.append(
      h('div', { class: 'card' }, h('h2', { text: 'Sync with each peer' }), peersBox),
      h('div', { class: 'card' }, h('h2', { text: 'What this node has' }),
        h('p', { class: 'help', text: 'The highest change number this node holds from each device (its version vector).' }),
        vectorBox));
  },

  /** Keeps the progress of every peer, whatever view is open. */
  event(event, ctx) {
    if (event.type === 'sync.progress') {
      progress.set(event.device_id, event);
      if (ctx && document.getElementById('view-sync')?.hidden === false) throttledRender(ctx);
    } else if (event.type === 'peer.disconnected') {
      progress.delete(event.device_id);
    }
  },

  render(ctx) {
    const state = ctx.state.sync;
    if (!state) return;
    const peers = state.peers ?? [];
    if (state !== measured) {
      measure(peers);
      measured = state;
    }
    fill(peersBox,
      state.paused ? h('p', null, pill('sync paused', 'paused'), ' Changes wait until sync resumes (Peers).') : null,
      table([
        { title: 'Peer', cell: (p) => h('span', { class: 'peer-name', text: p.name ?? shortId(p.device_id) }) },
        { title: 'State', cell: (p) => pill(p.state ?? 'unknown') },
        { title: 'Progress', cell: (p) => bar(p) },
        { title: 'In', cell: (p) => rate(rates.get(p.device_id)?.in) },
        { title: 'Out', cell: (p) => rate(rates.get(p.device_id)?.out) },
        { title: 'Lag', cell: (p) => (p.lag != null ? `${p.lag} behind` : '–') },
        { title: 'Last sync', cell: (p) => ago(p.last_sync) },
      ], peers, { empty: 'No peer has connected yet.' }));
    const vector = Object.entries(state.vector ?? {});
    fill(vectorBox, table([
      { title: 'Device', cell: ([device]) => h('span', { title: device, text: ctx.name(device) }) },
      { title: 'Changes', cell: ([, seq]) => String(seq) },
    ], vector, { empty: 'No changes yet.' }));
  },
};

let renderQueued = false;
function throttledRender(ctx) {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => { renderQueued = false; ctx.render(); }, 250);
}
