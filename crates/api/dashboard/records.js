// Records: pick a collection, filter with field=value pairs, page through records, and open one to
// see, per field, the value that shows, who wrote it and when, and the versions kept beside it.

import { fill, h, pill, table, time, valueText } from './dom.js';

let picker;
let filter;
let filterHelp;
let listBox;
let detailBox;
/** The open list: its collection, filter, records so far and the cursor of the next page. */
let list = { collection: null, where: '', records: [], next: null };
let openRecord = null;
let collectionsRead = -Infinity;

/** `kind=tea&hot=true` (or one pair per line) as `where.` query parameters; throws on a bad pair. */
export function whereParams(text) {
  const params = new URLSearchParams();
  for (const pair of text.split(/[&\n]/).map((p) => p.trim()).filter(Boolean)) {
    const at = pair.indexOf('=');
    if (at < 1) throw new Error(`"${pair}" is not field=value`);
    params.append(`where.${pair.slice(0, at).trim()}`, pair.slice(at + 1).trim());
  }
  return params;
}

async function loadCollections(ctx, force = false) {
  if (!force && performance.now() - collectionsRead < 10000) return;
  collectionsRead = performance.now();
  try {
    const answer = await ctx.api('GET', '/v1/collections');
    const names = (answer?.collections ?? []).map((c) => c.name);
    const current = picker.value;
    fill(picker, h('option', { value: '', text: names.length ? 'Choose a collection' : 'No collections yet' }),
      names.map((name) => h('option', { value: name, text: name })));
    if (names.includes(current)) picker.value = current;
  } catch (error) { ctx.fail(error, { background: true }); }
}

async function loadPage(ctx, more = false) {
  const collection = picker.value;
  if (!collection) {
    fill(listBox, h('p', { class: 'empty', text: 'Choose a collection to browse its records.' }));
    return;
  }
  let params;
  try {
    params = whereParams(filter.value);
    filterHelp.className = 'help';
    filterHelp.textContent = 'Keeps records whose fields equal these values: kind=tea&stock=7 (numbers and true/false as JSON).';
  } catch (error) {
    filterHelp.className = 'help invalid';
    filterHelp.textContent = error.message;
    return;
  }
  params.set('limit', '50');
  if (more && list.next) params.set('cursor', list.next);
  try {
    const page = await ctx.api('GET', `/v1/c/${encodeURIComponent(collection)}?${params}`);
    const records = more ? [...list.records, ...(page?.records ?? [])] : page?.records ?? [];
    list = { collection, where: filter.value, records, next: page?.next ?? null };
    renderList(ctx);
  } catch (error) {
    filterHelp.className = 'help invalid';
    filterHelp.textContent = error.message;
  }
}

function renderList(ctx) {
  fill(listBox,
    table([
      { title: 'Id', cell: (r) => h('button', { type: 'button', class: 'link record-id', text: r.id, onclick: () => openDetail(ctx, r.collection, r.id) }) },
      { title: 'Fields', cell: (r) => h('span', { class: 'fields', text: valueText(r.fields, 160) }) },
      { title: 'Scope', cell: (r) => r.scope ?? '–' },
      { title: 'Updated', cell: (r) => time(r.updated_at) },
      { title: 'Conflicts', cell: (r) => (r.conflicts ? pill(String(r.conflicts), 'paused') : '0') },
    ], list.records, { empty: list.where ? 'No record matches the filter.' : 'This collection is empty.' }),
    list.next ? h('button', { type: 'button', text: 'Load more', onclick: () => loadPage(ctx, true) }) : null);
}

async function openDetail(ctx, collection, id) {
  openRecord = { collection, id };
  const path = `/v1/c/${encodeURIComponent(collection)}/${encodeURIComponent(id)}/versions`;
  try {
    const record = await ctx.api('GET', path);
    renderDetail(ctx, record);
  } catch (error) {
    fill(detailBox, h('p', { class: 'why', text: error.message }));
  }
}

function renderDetail(ctx, record) {
  const writer = (w) => (w ? [h('span', { class: 'writer', title: w.device, text: ctx.name(w.device) }), ', ', time(w.at)] : '–');
  fill(detailBox, h('div', { class: 'card detail' },
    h('h3', null, h('span', { text: `${record.collection} / ` }), h('span', { class: 'record-title', text: record.id }),
      record.deleted ? pill('deleted', 'disconnected') : null),
    h('p', { class: 'muted' }, 'Last change ', time(record.updated_at),
      record.deleted_by ? [' · deleted by ', writer(record.deleted_by)] : null),
    table([
      { title: 'Field', cell: (f) => h('strong', { text: f.field }) },
      { title: 'Value', cell: (f) => h('span', { class: 'value', text: valueText(f.value, 500) }) },
      { title: 'Rule', cell: (f) => f.policy ?? '–' },
      { title: 'Written by', cell: (f) => (f.writer ? writer(f.writer) : 'sum of every device\'s count') },
      {
        title: 'Versions kept',
        // A counter's versions all count (each device's total); otherwise one wins, the rest wait.
        cell: (f) => ((f.versions ?? []).length <= 1 ? '–' : h('ul', { class: 'versions' }, f.versions.map((v) => h('li', { class: f.writer && v.wins ? 'wins' : '' },
          h('span', { class: 'value', text: valueText(v.value, 120) }), ' — ', writer(v), f.writer ? (v.wins ? ' (shown)' : ' (conflict)') : '')))),
      },
    ], record.fields ?? [], { empty: 'No fields.' }),
    h('p', { class: 'help', text: 'Each field shows the write whose value is visible now. Older values replaced by a later write are not kept; values still kept beside the winner are conflicts or per-device counter totals.' })));
}

export default {
  id: 'records',
  needs: ['peers'],

  init(section, ctx) {
    picker = h('select', { id: 'collection', name: 'collection', 'aria-label': 'Collection' });
    filter = h('input', { id: 'record-filter', name: 'where', placeholder: 'kind=tea&stock=7', autocomplete: 'off', spellcheck: 'false' });
    filterHelp = h('p', { class: 'help', text: 'Keeps records whose fields equal these values: kind=tea&stock=7 (numbers and true/false as JSON).' });
    listBox = h('div', { id: 'record-list' });
    detailBox = h('div', { id: 'record-detail' });
    const form = h('form', { class: 'inline-form', id: 'record-form' },
      h('div', { class: 'row' }, picker, filter, h('button', { type: 'submit', text: 'Show' })), filterHelp);
    form.addEventListener('submit', (e) => { e.preventDefault(); openRecord = null; fill(detailBox); loadPage(ctx); });
    picker.addEventListener('change', () => { openRecord = null; fill(detailBox); loadPage(ctx); });
    section.append(h('div', { class: 'card' }, h('h2', { text: 'Records' }), form, listBox), detailBox);
  },

  render(ctx) {
    loadCollections(ctx);
  },

  /** Shows a change to the open record as it happens. */
  event(event, ctx) {
    if (openRecord && event.collection === openRecord.collection && event.id === openRecord.id
      && document.getElementById('view-records')?.hidden === false) {
      openDetail(ctx, openRecord.collection, openRecord.id);
    }
  },

  /** For the tests and the console: open a collection programmatically. */
  async show(ctx, collection) {
    await loadCollections(ctx, true);
    picker.value = collection;
    await loadPage(ctx);
  },
};
