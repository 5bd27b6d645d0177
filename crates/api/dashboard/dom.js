// DOM helpers and formatting. Every string from the node (peer names, record values, error
// messages) becomes a text node or an attribute value here, never markup: the dashboard has no
// innerHTML. A peer called `<img src=x onerror=alert(1)>` is shown as exactly that text.

/**
 * Creates an element. `props`: `class`, `text` (textContent), `onX` (event listeners), anything
 * else an attribute (`true` for a bare one; null, undefined and false are left out). Children are
 * nodes or strings (strings become text nodes); arrays are flattened, null and false skipped.
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value == null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = String(value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  add(el, children);
  return el;
}

function add(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  add(el, children);
  return el;
}

/** A table whose cells carry their column name, so narrow screens can show rows as cards. */
export function table(columns, rows, { empty = 'Nothing yet.', rowClass } = {}) {
  if (rows.length === 0) return h('p', { class: 'empty', text: empty });
  return h('table', { class: 'grid' },
    h('thead', null, h('tr', null, columns.map((c) => h('th', { scope: 'col', text: c.title })))),
    h('tbody', null, rows.map((row) => h('tr', { class: rowClass?.(row) },
      columns.map((c) => h('td', { 'data-label': c.title }, h('div', { class: 'cell' }, c.cell(row))))))));
}

/** A definition list from [term, value] pairs; a null value is shown as a dash. */
export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.map(([term, value]) => [h('dt', { text: term }), h('dd', null, value ?? '–')]));
}

/** A button that copies `text()` and says so. */
export function copyButton(text, label = 'Copy') {
  const button = h('button', { type: 'button', class: 'small', text: label });
  button.addEventListener('click', async () => {
    const ok = await copy(text());
    button.textContent = ok ? 'Copied' : 'Select and copy';
    setTimeout(() => { button.textContent = label; }, 1500);
  });
  return button;
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API outside secure contexts (a LAN address over plain HTTP): the old way.
    const area = h('textarea', { readonly: true, class: 'offscreen' });
    area.value = text;
    document.body.append(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand('copy'); } catch { ok = false; }
    area.remove();
    return ok;
  }
}

/** Confirmations waiting for Yes or No, by key, so a re-render of the table keeps them open. */
const confirming = new Set();

/**
 * A button that asks "Sure?" in place before running `action` (no native dialog). `key` names
 * what it acts on; while the question is open, rebuilding the button with the same key shows
 * the question again instead of the button.
 */
export function confirmButton(label, question, action, { key = null, danger = true } = {}) {
  const wrap = h('span', { class: 'confirm' });
  const ask = h('button', { type: 'button', class: danger ? 'small danger' : 'small', text: label });
  const showQuestion = () => {
    if (key !== null) confirming.add(key);
    const yes = h('button', { type: 'button', class: 'small danger', text: 'Yes' });
    const no = h('button', { type: 'button', class: 'small', text: 'No' });
    yes.addEventListener('click', () => {
      confirming.delete(key);
      fill(wrap, h('span', { class: 'muted', text: '…' }));
      action();
    });
    no.addEventListener('click', () => { confirming.delete(key); fill(wrap, ask); });
    fill(wrap, h('span', { class: 'question', text: question }), ' ', yes, ' ', no);
  };
  ask.addEventListener('click', showQuestion);
  if (key !== null && confirming.has(key)) showQuestion();
  else wrap.append(ask);
  return wrap;
}

/** A JSON value as short text: strings as they are, everything else as JSON. */
export function valueText(value, max = 200) {
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return text === undefined ? '–' : text.length > max ? `${text.slice(0, max)}…` : text;
}

/** "12 s ago", "3 min ago", from an RFC 3339 time; a dash for null. */
export function ago(iso) {
  if (!iso) return '–';
  const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (Number.isNaN(seconds)) return String(iso);
  if (seconds < 2) return 'just now';
  return `${duration(seconds)} ago`;
}

/** A duration in seconds as "45 s", "3 min", "2 h 5 min", "4 d 3 h". */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** A local date and time from an RFC 3339 time, with the full time as a tooltip. */
export function time(iso) {
  if (!iso) return h('span', { class: 'muted', text: '–' });
  const date = new Date(iso);
  const text = Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  return h('time', { datetime: iso, title: iso, text });
}

/** The first group of a device id, enough to tell devices apart at a glance. */
export function shortId(device) {
  return typeof device === 'string' ? device.split('-')[0] : '–';
}

/** A state as a coloured pill: connected, connecting, disconnected, paused, ... */
export function pill(text, kind = text) {
  return h('span', { class: `pill ${String(kind).replace(/[^a-z_-]/gi, '')}`, text });
}
