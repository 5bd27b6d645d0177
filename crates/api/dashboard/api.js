// The node's HTTP API as the page uses it: the token, JSON calls, and the live event stream.
//
// The token arrives once in the address (`/?token=..`, printed by `meshsync run`). It is moved to
// sessionStorage (it lasts as long as the tab, and no other site can read it) and taken out of
// the address bar and history. Every call sends it as `Authorization: Bearer`, the event stream
// included: the stream is read with fetch() rather than EventSource, because EventSource cannot
// set headers and would need the token in its URL.

const TOKEN_KEY = 'meshsync.token';

/** Moves `?token=` from the address into the tab's session storage. */
export function takeTokenFromAddress() {
  const url = new URL(window.location.href);
  const token = url.searchParams.get('token');
  if (token === null) return;
  if (token.trim() !== '') setToken(token);
  url.searchParams.delete('token');
  window.history.replaceState(null, '', url.pathname + url.search + url.hash);
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token.trim());
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** An error answer of the API (`{"error":{"code","message"}}`), or `network` when none came. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the API; answers the parsed JSON or throws an ApiError. `body` is sent as JSON. */
export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${getToken() ?? ''}`, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method, headers, cache: 'no-store', body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the node (${e.message}); is meshsync still running?`);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const error = data?.error;
    throw new ApiError(response.status, error?.code ?? `http_${response.status}`,
      error?.message ?? `${method} ${path} answered HTTP ${response.status}`);
  }
  return data;
}

/** Longest wait between two attempts to reopen the event stream. */
const RETRY_MS_MAX = 15000;

/**
 * Follows `GET /v1/events` as Server-Sent Events, reopening it after a failure (1 s, doubling to
 * 15 s). Calls `onEvent(event)` per event and `onState(state, detail)` with `live`, `retrying`
 * (detail: the reason) or `unauthorized`. Resumes from the last record cursor it saw, so record
 * changes made while it was away still arrive. Returns a function that closes it.
 */
export function followEvents({ onEvent, onState }) {
  let closed = false;
  let cursor = null;
  let retryMs = 1000;
  let controller = null;

  async function once() {
    controller = new AbortController();
    const query = cursor === null ? '' : `?cursor=${cursor}`;
    const response = await fetch(`/v1/events${query}`, {
      headers: { Authorization: `Bearer ${getToken() ?? ''}`, Accept: 'text/event-stream' },
      cache: 'no-store',
      signal: controller.signal,
    });
    if (response.status === 401) return 'unauthorized';
    if (response.status === 409) {
      // The cursor is from another data dir (the node was reset): start again from now.
      cursor = null;
      throw new Error('the node no longer knows where this page left off; following from now');
    }
    if (!response.ok || !response.body) throw new Error(`the event stream answered HTTP ${response.status}`);
    onState('live');
    retryMs = 1000;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error('the node closed the event stream');
      buffer += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split('\n').filter((line) => line.startsWith('data:'))
          .map((line) => line.slice(5).replace(/^ /, '')).join('\n');
        if (!data) continue; // a keep-alive comment
        let event;
        try { event = JSON.parse(data); } catch { continue; }
        if (typeof event.cursor === 'number') cursor = event.cursor;
        onEvent(event);
      }
    }
  }

  (async () => {
    while (!closed) {
      try {
        if (await once() === 'unauthorized') {
          onState('unauthorized');
          return;
        }
      } catch (e) {
        if (closed) return;
        onState('retrying', `${e.message}; retrying in ${Math.round(retryMs / 1000)} s`);
        await new Promise((resolve) => { setTimeout(resolve, retryMs); });
        retryMs = Math.min(retryMs * 2, RETRY_MS_MAX);
      }
    }
  })();

  return () => {
    closed = true;
    controller?.abort();
  };
}
