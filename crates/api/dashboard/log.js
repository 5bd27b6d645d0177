// The live log: every event of the node's stream and what the dashboard did, newest at the
// bottom, with a text filter and a pause. Holds at most LINES_MAX lines.

import { h, shortId } from './dom.js';

const LINES_MAX = 500;

let box;
let filterInput;
let pauseButton;
let counter;
let paused = false;
/** Lines that arrived while paused, shown on resume (bounded like the log). */
let held = [];
let ctxRef = null;

function matches(line) {
  const needle = filterInput?.value.trim().toLowerCase();
  return !needle || line.dataset.text.includes(needle);
}

/** Lines to add at the next frame: a burst of events (a catch-up) costs one layout, not one each. */
let queued = [];

function append(line) {
  queued.push(line);
  if (queued.length > LINES_MAX) queued.shift();
  if (queued.length === 1) requestAnimationFrame(flush);
}

function flush() {
  const lines = queued;
  queued = [];
  for (const line of lines) line.hidden = !matches(line);
  box.append(...lines);
  while (box.childElementCount > LINES_MAX) box.firstElementChild.remove();
  counter.textContent = `${box.childElementCount} lines${held.length ? `, ${held.length} waiting` : ''}`;
  if (!paused && !box.closest('[hidden]')) box.scrollTop = box.scrollHeight;
}

function makeLine(kind, text) {
  const stamp = new Date().toLocaleTimeString();
  const line = h('div', { class: `line ${String(kind).replace(/[^a-z.]/gi, '')}` },
    h('span', { class: 'at', text: stamp }), ' ',
    h('span', { class: 'kind', text: kind }), ' ',
    h('span', { class: 'text', text }));
  line.dataset.text = `${stamp} ${kind} ${text}`.toLowerCase();
  return line;
}

function name(device) {
  return ctxRef ? ctxRef.name(device) : shortId(device);
}

/** One line of text for an event of the stream. */
function describe(e) {
  switch (e.type) {
    case 'record.changed':
      return `${e.collection}/${e.id} ${e.deleted ? 'deleted' : 'changed'} by ${e.local ? 'this device' : name(e.origin)}`;
    case 'schema.changed':
      return `schema of ${e.collection} changed`;
    case 'conflict.detected':
      return `conflict on ${e.collection}/${e.record}.${e.field}`;
    case 'peer.connected':
      return `${e.name ?? '?'} (${shortId(e.device_id)}) connected from ${e.addr ?? '?'}`;
    case 'peer.disconnected':
      return `${name(e.device_id)} disconnected: ${e.reason ?? ''}`;
    case 'sync.progress':
      return `from ${name(e.device_id)}: ${e.received} received, about ${e.remaining} to go${e.caught_up ? ', caught up' : ''}`;
    case 'message': {
      const m = e.message ?? {};
      return `message "${m.type}" from ${name(m.from)} to ${m.to ? name(m.to) : 'everyone'}: ${JSON.stringify(m.data)}`;
    }
    default:
      return JSON.stringify(e);
  }
}

export default {
  id: 'log',
  needs: [],

  init(section, ctx) {
    ctxRef = ctx;
    filterInput = h('input', { id: 'log-filter', type: 'search', placeholder: 'Filter, e.g. peer or products/tea', 'aria-label': 'Filter the log' });
    pauseButton = h('button', { type: 'button', text: 'Pause' });
    counter = h('span', { class: 'muted', text: '0 lines' });
    box = h('div', { id: 'log-lines', class: 'log', role: 'log', 'aria-live': 'off' });
    filterInput.addEventListener('input', () => {
      for (const line of box.children) line.hidden = !matches(line);
    });
    pauseButton.addEventListener('click', () => {
      paused = !paused;
      pauseButton.textContent = paused ? 'Resume' : 'Pause';
      if (!paused) {
        const waiting = held;
        held = [];
        waiting.forEach(append);
      }
    });
    const clear = h('button', { type: 'button', text: 'Clear', onclick: () => { box.replaceChildren(); held = []; counter.textContent = '0 lines'; } });
    section.append(h('div', { class: 'card' },
      h('h2', { text: 'Live log' }),
      h('div', { class: 'toolbar' }, filterInput, pauseButton, clear, counter),
      box));
  },

  render() {
    box.scrollTop = box.scrollHeight;
  },

  /** Logs an event of the node's stream. */
  event(event) {
    this.line(event.type ?? 'event', describe(event));
  },

  /** Logs a line of the dashboard's own. */
  line(kind, text) {
    if (!box) return;
    const line = makeLine(kind, text);
    if (paused) {
      held.push(line);
      if (held.length > LINES_MAX) held.shift();
      counter.textContent = `${box.childElementCount} lines, ${held.length} waiting`;
    } else {
      append(line);
    }
  },
};
