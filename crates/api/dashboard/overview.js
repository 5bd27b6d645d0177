// Overview: this device (name, id, group, role, version, uptime, records) and its peers at a glance.

import { ago, copyButton, duration, facts, fill, h, pill, shortId } from './dom.js';

let deviceCard;
let peersCard;

export default {
  id: 'overview',
  needs: ['peers', 'members'],

  init(section) {
    deviceCard = h('div', { class: 'card' });
    peersCard = h('div', { class: 'card' });
    section.append(h('div', { class: 'columns' }, deviceCard, peersCard));
  },

  render(ctx) {
    const status = ctx.state.status;
    if (!status) return;
    const me = ctx.state.members.find((m) => m.device_id === status.device_id);
    const conflicts = status.conflicts ?? 0;
    fill(deviceCard,
      h('h2', { text: 'This device' }),
      facts([
        ['Name', h('strong', { class: 'device', text: status.name })],
        ['Device id', h('span', { class: 'id-line' }, h('code', { id: 'device-id', text: status.device_id }), ' ',
          copyButton(() => status.device_id))],
        ['Group', status.group_id ? h('code', { text: status.group_id }) : 'none yet'],
        ['Role', me?.role ?? null],
        ['Version', status.version],
        ['Uptime', status.uptime_s == null ? null : duration(status.uptime_s)],
        ['Records', String(status.records ?? '–')],
        ['Conflicts', conflicts ? h('a', { href: '#conflicts', text: `${conflicts} waiting` }) : 'none'],
        ['Peers on', status.listen ? h('code', { text: status.listen }) : 'no mesh'],
        ['Sync', status.paused ? pill('paused') : pill('running', 'connected')],
      ]));

    const list = ctx.state.peers;
    const counts = status.peers ?? {};
    fill(peersCard,
      h('h2', null, 'Peers ', h('span', { class: 'muted', text: `${counts.connected ?? 0} connected of ${counts.known ?? list.length}` })),
      list.length === 0
        ? h('p', { class: 'empty', text: 'No peers yet. Invite a device (Members) or add one by address (Peers).' })
        : h('ul', { class: 'peer-summary' }, list.map((peer) => h('li', { class: 'peer-line' },
          pill(peer.state ?? 'unknown'), ' ',
          h('span', { class: 'peer-name', text: peer.name ?? (peer.addrs ?? [])[0] ?? shortId(peer.device_id) }),
          ' ',
          h('span', { class: 'muted' },
            peer.state === 'connected'
              ? [peer.rtt_ms != null ? `${Math.round(peer.rtt_ms)} ms` : null, peer.lag != null ? ` · lag ${peer.lag}` : null,
                peer.last_sync ? ` · synced ${ago(peer.last_sync)}` : null]
              : [peer.last_seen ? `seen ${ago(peer.last_seen)}` : 'never reached']),
          peer.state !== 'connected' && peer.last_error
            ? h('div', { class: 'why', text: `Why: ${peer.last_error}` }) : null))),
      h('p', null, h('a', { href: '#peers', text: 'Manage peers →' })));
  },
};
