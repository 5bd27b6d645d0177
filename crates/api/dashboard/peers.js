// Peers: the live peer table (state, how each was found, addresses, round trip, lag, last sync,
// why the last dial failed), with connection tests and removal; adding a static peer; pausing,
// resuming and reconnecting sync.

import { ago, confirmButton, fill, h, pill, shortId, table } from './dom.js';

/** host:port, where host is a name, an IPv4 address or a bracketed IPv6 address. */
const ADDRESS = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})$/;

/** What to tell someone who typed `text` as a peer address; empty when it looks right. */
export function addressProblem(text) {
  const match = ADDRESS.exec(text.trim());
  if (!match) return 'Use host:port, for example 192.168.1.20:7710 or till-2.local:7710 ([::1]:7710 for IPv6).';
  const port = Number(match[3]);
  if (port < 1 || port > 65535) return 'The port must be from 1 to 65535.';
  return '';
}

/** The key the API knows a peer by: its device id, or its address while the device is unknown. */
const keyOf = (peer) => peer.device_id ?? (peer.addrs ?? [])[0];

/** Outcomes of connection tests, by peer key, kept across re-renders. */
const tests = new Map();

let toolbar;
let listBox;

export default {
  id: 'peers',
  needs: ['peers'],

  init(section, ctx) {
    toolbar = h('div', { class: 'toolbar' });
    const input = h('input', {
      id: 'peer-addr', name: 'addr', placeholder: '192.168.1.20:7710', autocomplete: 'off', spellcheck: 'false',
      'aria-describedby': 'peer-addr-help', inputmode: 'url',
    });
    const help = h('p', { id: 'peer-addr-help', class: 'help', text: 'The address where the other node accepts peers (its "peers on" line).' });
    const form = h('form', { id: 'add-peer', class: 'inline-form', novalidate: true },
      h('label', { for: 'peer-addr', text: 'Add a peer by address' }),
      h('div', { class: 'row' }, input, h('button', { type: 'submit', text: 'Add peer' })),
      help);
    input.addEventListener('input', () => {
      help.className = 'help';
      help.textContent = input.value.trim() === '' || !addressProblem(input.value)
        ? 'The address where the other node accepts peers (its "peers on" line).'
        : addressProblem(input.value);
    });
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const problem = addressProblem(input.value);
      if (problem) {
        help.className = 'help invalid';
        help.textContent = problem;
        input.focus();
        return;
      }
      try {
        const peer = await ctx.api('POST', '/v1/peers', { addr: input.value.trim() });
        ctx.notice(`Added ${(peer?.addrs ?? [input.value.trim()])[0]}; dialing it now.`);
        ctx.log('action', `added static peer ${input.value.trim()}`);
        input.value = '';
        await ctx.refresh('peers', 'status');
      } catch (error) {
        help.className = 'help invalid';
        help.textContent = error.message;
      }
    });
    listBox = h('div', { id: 'peer-table' });
    section.append(
      h('div', { class: 'card' }, h('h2', { text: 'Peers' }), toolbar, listBox),
      h('div', { class: 'card' }, form));
  },

  render(ctx) {
    const paused = ctx.state.status?.paused;
    const act = (label, path, done) => h('button', {
      type: 'button', text: label,
      onclick: async () => {
        try {
          const answer = await ctx.api('POST', path);
          ctx.notice(done(answer));
          ctx.log('action', done(answer));
          await ctx.refresh('status', 'peers');
        } catch (error) { ctx.fail(error); }
      },
    });
    fill(toolbar,
      paused
        ? act('Resume sync', '/v1/sync/resume', () => 'Sync resumed.')
        : act('Pause sync', '/v1/sync/pause', () => 'Sync paused: links stay open, changes wait.'),
      act('Reconnect all', '/v1/sync/reconnect', (a) => `Reconnecting to ${a?.reconnecting ?? 0} peer(s).`),
      paused ? pill('sync paused', 'paused') : null);

    fill(listBox, table([
      { title: 'Name', cell: (p) => h('span', { class: 'peer-name', text: p.name ?? '(not reached yet)' }) },
      { title: 'Device', cell: (p) => (p.device_id ? h('code', { title: p.device_id, text: shortId(p.device_id) }) : '–') },
      { title: 'State', cell: (p) => pill(p.state ?? 'unknown') },
      { title: 'Found by', cell: (p) => (p.sources ?? []).join(', ') || '–' },
      { title: 'Addresses', cell: (p) => (p.addrs ?? []).map((a) => h('code', { class: 'addr', text: a })) },
      { title: 'Round trip', cell: (p) => (p.rtt_ms != null ? `${Math.round(p.rtt_ms * 10) / 10} ms` : '–') },
      { title: 'Lag', cell: (p) => (p.lag != null ? String(p.lag) : '–') },
      { title: 'Last sync', cell: (p) => ago(p.last_sync) },
      { title: 'Last error', cell: (p) => (p.last_error ? h('span', { class: 'why', text: p.last_error }) : '–') },
      { title: 'Actions', cell: (p) => actions(p, ctx) },
    ], ctx.state.peers, { empty: 'No peers yet. Add one by address below, or invite a device from Members.', rowClass: (p) => `peer-row ${p.state ?? ''}` }));
  },
};

function actions(peer, ctx) {
  const key = keyOf(peer);
  if (!key) return '–';
  const path = encodeURIComponent(key);
  const outcome = tests.get(key);
  const test = h('button', {
    type: 'button', class: 'small', text: 'Test',
    onclick: async () => {
      tests.set(key, { pending: true });
      ctx.render();
      try {
        const result = await ctx.api('POST', `/v1/peers/${path}/test`);
        tests.set(key, result);
        ctx.log('action', `connection test ${key}: ${result.reachable ? `reachable in ${Math.round(result.rtt_ms)} ms` : result.error}`);
      } catch (error) {
        tests.delete(key);
        ctx.fail(error);
      }
      ctx.render();
    },
  });
  const remove = confirmButton('Remove', 'Forget this peer?', async () => {
    try {
      await ctx.api('DELETE', `/v1/peers/${path}`);
      ctx.notice(`Removed ${peer.name ?? key}.`);
      ctx.log('action', `removed peer ${key}`);
    } catch (error) { ctx.fail(error); }
    await ctx.refresh('peers', 'status');
  }, { key: `remove ${key}` });
  let result = null;
  if (outcome?.pending) result = h('span', { class: 'muted', text: 'testing…' });
  else if (outcome) {
    result = outcome.reachable
      ? h('span', { class: 'ok', text: `reachable, ${Math.round(outcome.rtt_ms)} ms` })
      : h('span', { class: 'why', text: `unreachable: ${outcome.error ?? 'no answer'}` });
  }
  return h('div', { class: 'actions' }, test, ' ', remove, result ? h('div', { class: 'test-result' }, result) : null);
}
