// Conflicts: each value that lost to a concurrent write, beside the value that won, with who wrote
// each and when; resolving writes the chosen value (it replicates like any write).

import { fill, h, time, valueText } from './dom.js';

let listBox;

export default {
  id: 'conflicts',
  needs: ['conflicts', 'peers', 'members'],

  init(section) {
    listBox = h('div', { id: 'conflict-list' });
    section.append(h('div', { class: 'card' },
      h('h2', { text: 'Conflicts' }),
      h('p', { class: 'help', text: 'Two devices changed the same field without seeing each other\'s change. The merge rule picked one value; the other is kept here until you choose.' }),
      listBox));
  },

  render(ctx) {
    const conflicts = ctx.state.conflicts;
    if (conflicts.length === 0) {
      fill(listBox, h('p', { class: 'empty', text: 'No conflicts waiting.' }));
      return;
    }
    fill(listBox, conflicts.map((c) => h('article', { class: 'conflict', 'data-id': c.id },
      h('h3', null,
        h('span', { class: 'where', text: `${c.collection} / ${c.record}` }), ' · ',
        h('span', { class: 'field', text: c.field })),
      h('p', { class: 'muted' }, 'Detected ', time(c.detected_at)),
      h('div', { class: 'sides' },
        side(ctx, c, c.kept, 'Kept (the rule\'s winner)', 'Keep this', undefined),
        side(ctx, c, c.lost, 'Lost', 'Use this', c.lost?.value)))));
  },
};

function side(ctx, conflict, version, title, label, chosen) {
  return h('div', { class: 'side' },
    h('h4', { text: title }),
    h('pre', { class: 'value', text: valueText(version?.value, 2000) }),
    h('p', { class: 'muted' }, 'by ', h('span', { class: 'writer', title: version?.device ?? '', text: ctx.name(version?.device) }),
      ', ', time(version?.at)),
    h('button', {
      type: 'button', class: 'resolve', text: label,
      onclick: async (e) => {
        e.target.disabled = true;
        try {
          // No body keeps the winner; {"value": ..} writes the chosen one.
          await ctx.api('POST', `/v1/conflicts/${encodeURIComponent(conflict.id)}/resolve`,
            chosen === undefined ? undefined : { value: chosen });
          ctx.notice(`Resolved ${conflict.collection}/${conflict.record}.${conflict.field}.`);
          ctx.log('action', `resolved conflict ${conflict.id}: ${label === 'Keep this' ? 'kept the winner' : 'used the lost value'}`);
        } catch (error) {
          ctx.fail(error);
        }
        await ctx.refresh('conflicts', 'status');
      },
    }));
}
