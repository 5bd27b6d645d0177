// The dashboard's frame: the token, the tabs, the error banner, what the node said last (`state`)
// and keeping it fresh: a poll every few seconds for what the open view shows, plus the live event
// stream, which triggers a refresh when a peer comes or goes or a conflict appears. Each view is a
// module with `init(section, ctx)` (built once) and `render(ctx)` (after new data).

import { api, ApiError, clearToken, followEvents, getToken, setToken, takeTokenFromAddress } from './api.js';
import { fill, h, shortId } from './dom.js';
import overview from './overview.js';
import peers from './peers.js';
import sync from './sync.js';
import conflicts from './conflicts.js';
import members from './members.js';
import records from './records.js';
import log from './log.js';

const VIEWS = [overview, peers, sync, conflicts, members, records, log];
/** How often the open view's data is read again, in ms. */
const POLL_MS = 3000;

/** Where each piece of state comes from. */
const SOURCES = {
  status: '/v1/status',
  peers: '/v1/peers',
  sync: '/v1/sync/state',
  conflicts: '/v1/conflicts?limit=500',
  members: '/v1/members',
};

const state = { status: null, peers: [], sync: null, conflicts: [], members: [] };
let active = VIEWS[0];
let pollTimer = null;
let stopEvents = null;

const ctx = {
  state,
  api,
  /** Reads the named parts of the state again and renders the open view. */
  refresh,
  /** Shows an error in the banner. */
  fail,
  /** Shows a short confirmation. */
  notice,
  /** The name of a device, from what the node told us, else the start of its id. */
  name(device) {
    if (!device) return '–';
    if (state.status?.device_id === device) return `${state.status.name} (this device)`;
    const known = state.peers.find((p) => p.device_id === device)?.name
      ?? state.members.find((m) => m.device_id === device)?.name;
    return known || shortId(device);
  },
  /** Writes a line to the live log. */
  log: (kind, text) => log.line(kind, text),
  render: () => renderActive(),
};

// ---- the banner: errors stay until dismissed; background ones clear when the node answers again

const banner = document.getElementById('banner');
let bannerBackground = false;

function fail(error, { background = false } = {}) {
  if (error instanceof ApiError && error.status === 401) {
    showLogin('The node refused the token. Open the link that "meshsync run" printed, or paste the token below.');
    return;
  }
  if (background && !banner.hidden && !bannerBackground) return; // keep the user's error in view
  bannerBackground = background;
  const code = error instanceof ApiError ? error.code : 'error';
  fill(banner, h('strong', { text: code }), ' ', h('span', { text: error.message ?? String(error) }),
    h('button', { type: 'button', class: 'small', text: 'Dismiss', onclick: () => { banner.hidden = true; } }));
  banner.className = 'banner error';
  banner.hidden = false;
  ctx.log('error', `${code}: ${error.message ?? error}`);
}

let noticeTimer = null;
function notice(text) {
  const box = document.getElementById('notice');
  box.textContent = text;
  box.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { box.hidden = true; }, 3000);
}

// ---- state

async function refresh(...parts) {
  const wanted = [...new Set(parts.flat())].filter((p) => SOURCES[p]);
  const results = await Promise.allSettled(wanted.map((p) => api('GET', SOURCES[p])));
  let failed = null;
  results.forEach((result, i) => {
    const part = wanted[i];
    if (result.status === 'rejected') { failed ??= result.reason; return; }
    const data = result.value;
    state[part] = part === 'status' || part === 'sync' ? data : data?.[part] ?? [];
  });
  if (failed) {
    fail(failed, { background: true });
  } else if (bannerBackground && !banner.hidden) {
    banner.hidden = true;
  }
  renderHeader();
  renderActive();
}

function renderHeader() {
  const status = state.status;
  document.getElementById('device-name').textContent = status?.name ?? '';
  document.title = status?.name ? `meshsync · ${status.name}` : 'meshsync';
  const count = document.getElementById('conflict-count');
  count.textContent = status?.conflicts ? String(status.conflicts) : '';
  count.hidden = !status?.conflicts;
  document.getElementById('paused').hidden = !status?.paused;
}

function renderActive() {
  try {
    active.render(ctx);
  } catch (e) {
    fail(e);
  }
}

// ---- tabs

function show(id) {
  const view = VIEWS.find((v) => v.id === id) ?? VIEWS[0];
  active = view;
  for (const v of VIEWS) {
    document.getElementById(`view-${v.id}`).hidden = v !== view;
    const tab = document.querySelector(`#tabs a[href="#${v.id}"]`);
    if (v === view) tab.setAttribute('aria-current', 'page'); else tab.removeAttribute('aria-current');
  }
  renderActive();
  poll();
}

function poll() {
  clearTimeout(pollTimer);
  if (!getToken()) return;
  const parts = ['status', ...(active.needs ?? [])];
  refresh(parts).finally(() => {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, document.hidden ? POLL_MS * 5 : POLL_MS);
  });
}

// ---- live events

let refreshSoon = null;
const pending = new Set();
/** Refreshes `parts` once after a burst of events. */
function refreshAfterEvents(...parts) {
  parts.forEach((p) => pending.add(p));
  if (refreshSoon) return;
  refreshSoon = setTimeout(() => {
    refreshSoon = null;
    const wanted = [...pending];
    pending.clear();
    refresh(wanted);
  }, 300);
}

function onEvent(event) {
  log.event(event, ctx);
  sync.event(event, ctx);
  switch (event.type) {
    case 'peer.connected':
    case 'peer.disconnected':
      refreshAfterEvents('status', 'peers', 'sync', 'members');
      break;
    case 'conflict.detected':
      refreshAfterEvents('status', 'conflicts');
      break;
    case 'record.changed':
      refreshAfterEvents('status');
      records.event(event, ctx);
      break;
    default:
      break;
  }
}

function startEvents() {
  stopEvents?.();
  const live = document.getElementById('live');
  stopEvents = followEvents({
    onEvent,
    onState(stateName, detail) {
      live.className = `pill ${stateName === 'live' ? 'connected' : 'connecting'}`;
      live.textContent = stateName === 'live' ? 'live' : 'reconnecting…';
      live.title = detail ?? '';
      if (stateName === 'live') ctx.log('stream', 'following the node\'s events');
      if (stateName === 'retrying') ctx.log('stream', `event stream lost: ${detail}`);
      if (stateName === 'unauthorized') fail(new ApiError(401, 'unauthorized', 'the event stream refused the token'));
    },
  });
}

// ---- the token form

function showLogin(message) {
  stopEvents?.();
  stopEvents = null;
  clearTimeout(pollTimer);
  document.getElementById('login-message').textContent = message;
  document.getElementById('login').hidden = false;
  document.getElementById('app').hidden = true;
}

function start() {
  document.getElementById('login').hidden = true;
  document.getElementById('app').hidden = false;
  startEvents();
  show(window.location.hash.slice(1));
}

function main() {
  takeTokenFromAddress();
  for (const view of VIEWS) view.init(document.getElementById(`view-${view.id}`), ctx);
  window.addEventListener('hashchange', () => show(window.location.hash.slice(1)));
  document.addEventListener('visibilitychange', () => { if (!document.hidden) poll(); });
  document.getElementById('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = document.getElementById('login-token');
    if (!input.value.trim()) return;
    setToken(input.value);
    input.value = '';
    banner.hidden = true;
    start();
  });
  document.getElementById('logout').addEventListener('click', () => {
    clearToken();
    showLogin('Signed out of this tab. Paste the token to come back.');
  });
  if (getToken()) start();
  else showLogin('This dashboard needs the node\'s API token. Open the link that "meshsync run" printed, or paste the token from <data-dir>/api-token.');
}

main();
