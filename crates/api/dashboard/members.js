// Members and invites: the group's devices with their roles and scopes, revoking one, creating an
// invite (a code and its QR code), and the audit log.

import { confirmButton, copyButton, fill, h, pill, shortId, table, time, valueText } from './dom.js';

let membersBox;
let inviteBox;
let auditBox;

/** Base64 of a string's UTF-8 bytes. */
function base64(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

/**
 * The QR code, shown as an image of the SVG the node drew. An <img> never runs scripts or loads
 * anything an SVG refers to, so even a hostile SVG could not act in the page; inserting the SVG
 * as markup could. The CSP allows data: images for this.
 */
function qrImage(svg) {
  return h('img', { class: 'qr', alt: 'Invite QR code', width: '256', height: '256', src: `data:image/svg+xml;base64,${base64(svg)}` });
}

function showInvite(invite) {
  fill(inviteBox,
    h('div', { class: 'invite' },
      qrImage(invite.qr_svg ?? ''),
      h('div', { class: 'invite-text' },
        h('p', null, 'Scan it, or run on the new device: ', h('code', { text: 'meshsync run --join CODE' })),
        h('textarea', { id: 'invite-code', class: 'code', readonly: true, rows: '4', spellcheck: 'false', text: invite.code }),
        h('p', null, copyButton(() => invite.code, 'Copy code')),
        h('p', { class: 'muted' }, `${invite.role ?? 'writer'}`, invite.scopes?.length ? ` · scopes ${invite.scopes.join(', ')}` : '',
          ` · ${invite.uses ?? 1} use(s) · expires `, time(invite.expires_at)),
        h('p', { class: 'help', text: 'The code carries the group key: share it like a password.' }))));
}

export default {
  id: 'members',
  needs: ['members'],

  init(section, ctx) {
    membersBox = h('div', { id: 'member-table' });
    inviteBox = h('div', { id: 'invite-result' });
    auditBox = h('div');
    const role = h('select', { id: 'invite-role', name: 'role' },
      ['writer', 'reader', 'admin'].map((r) => h('option', { value: r, text: r })));
    const scopes = h('input', { id: 'invite-scopes', name: 'scopes', placeholder: 'warehouse:kitchen, batch:POC-001', autocomplete: 'off' });
    const ttl = h('select', { id: 'invite-ttl', name: 'ttl_s' },
      [['1 hour', 3600], ['8 hours', 28800], ['1 day', 86400], ['7 days', 604800]].map(([t, s]) => h('option', { value: String(s), text: t })));
    const uses = h('input', { id: 'invite-uses', name: 'uses', type: 'number', min: '1', max: '10000', value: '1' });
    const form = h('form', { id: 'invite-form', class: 'stack-form' },
      h('label', null, 'Role', role),
      h('label', null, 'Scopes (comma-separated, empty for none)', scopes),
      h('label', null, 'Valid for', ttl),
      h('label', null, 'Uses', uses),
      h('button', { type: 'submit', text: 'Create invite' }));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const body = {
        role: role.value,
        scopes: scopes.value.split(',').map((s) => s.trim()).filter(Boolean),
        ttl_s: Number(ttl.value),
        uses: Math.max(1, Math.min(10000, Number(uses.value) || 1)),
      };
      try {
        const invite = await ctx.api('POST', '/v1/invites', body);
        showInvite(invite);
        ctx.log('action', `created an invite (${body.role}, expires ${invite.expires_at})`);
      } catch (error) { ctx.fail(error); }
    });
    section.append(
      h('div', { class: 'card' }, h('h2', { text: 'Members' }), membersBox),
      h('div', { class: 'card' }, h('h2', { text: 'Invite a device' }), h('div', { class: 'columns' }, form, inviteBox)),
      h('div', { class: 'card' }, h('h2', { text: 'Audit log' }), auditBox));
  },

  async render(ctx) {
    const me = ctx.state.status?.device_id;
    fill(membersBox, table([
      { title: 'Name', cell: (m) => h('span', { class: 'peer-name', text: m.name ?? '(not connected yet)' }) },
      { title: 'Device', cell: (m) => h('code', { title: m.device_id, text: shortId(m.device_id) }) },
      { title: 'Role', cell: (m) => m.role ?? '–' },
      { title: 'Scopes', cell: (m) => (m.scopes?.length ? m.scopes.join(', ') : m.role === 'admin' ? 'all' : '–') },
      { title: 'Status', cell: (m) => (m.revoked ? pill('revoked', 'disconnected') : pill('member', 'connected')) },
      {
        title: 'Actions',
        cell: (m) => (m.device_id === me ? h('span', { class: 'muted', text: 'this device' }) : m.revoked ? '–'
          : confirmButton('Revoke', 'Revoke this device?', async () => {
            try {
              await ctx.api('POST', `/v1/members/${encodeURIComponent(m.device_id)}/revoke`);
              ctx.notice(`Revoked ${m.name ?? m.device_id}.`);
              ctx.log('action', `revoked ${m.device_id}`);
            } catch (error) { ctx.fail(error); }
            await ctx.refresh('members');
          }, { key: `revoke ${m.device_id}` })),
      },
    ], ctx.state.members, { empty: 'No members.' }));
    await renderAudit(ctx);
  },
};

let auditRead = -Infinity;
async function renderAudit(ctx) {
  // The audit log changes rarely: read it at most every 10 s.
  if (performance.now() - auditRead < 10000 && auditBox.childElementCount) return;
  auditRead = performance.now();
  try {
    const answer = await ctx.api('GET', '/v1/audit');
    const entries = answer?.entries ?? [];
    fill(auditBox, table([
      { title: 'When', cell: (e) => time(e.at) },
      { title: 'What', cell: (e) => e.kind ?? '–' },
      { title: 'Device', cell: (e) => (e.device ? h('span', { title: e.device, text: ctx.name(e.device) }) : '–') },
      { title: 'Detail', cell: (e) => valueText(e.detail, 300) },
    ], entries.slice(0, 200), { empty: 'Nothing recorded yet.' }));
  } catch (error) {
    ctx.fail(error, { background: true });
  }
}
