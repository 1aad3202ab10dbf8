/**
 * Daveloper edge client: gRPC calls over one WebSocket, the JSON subprotocol of
 * docs/websocket-protocol.md. It is the page's only transport and the reference client.
 *
 *   const conn = await connect('ws://host/ws', { token, onclose: (info) => ... });
 *   const reply = await conn.unary('/daveloper.v1.SessionService/GetSession', {});
 *   for await (const msg of conn.serverStream('/daveloper.v1.AgentService/Watch', { conversationId })) ...
 *   const chat = conn.bidi('/daveloper.v1.AgentService/Chat');
 *   await chat.send({ send: { conversationId, text } });
 *   for await (const msg of chat) ...            // chat.end() half-closes, chat.cancel() cancels
 *
 * Messages are proto3 canonical JSON (lowerCamelCase, 64-bit integers as strings, enums by name).
 * A call that ends with any status but `ok` throws (or rejects with) an {@link RpcError}.
 * A connection that fails before `welcome` rejects with a {@link ConnectionClosed}.
 * Flow control is automatic: response credits are granted as the caller consumes messages,
 * and `send` waits while the server's send window is used up.
 * Reconnecting is the caller's job: `onclose` says how the socket ended; calls still open
 * at that moment end with `unavailable`.
 */

export const SUBPROTOCOL = 'daveloper.v1.json';

/** WebSocket close codes of §6. */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006, // never on the wire: the socket dropped without a close frame
  TOO_BIG: 1009,
  INTERNAL: 1011,
  TRY_AGAIN_LATER: 1013,
  MALFORMED_FRAME: 4400,
  UNAUTHENTICATED: 4401,
  UNKNOWN_STREAM: 4404,
  TIMEOUT: 4408,
  STREAM_ID_REUSE: 4409,
  TOO_MANY_SOCKETS: 4429,
});

/** Close codes that are client bugs or policy: reconnecting the same way would fail again. */
export const FATAL_CLOSE_CODES = new Set([4400, 4401, 4404, 4409]);

/** A call that ended with a status other than `ok` (Connect error JSON: code, message, details). */
export class RpcError extends Error {
  constructor(status) {
    super(status.message || status.code);
    this.name = 'RpcError';
    /** Connect code, e.g. `invalid_argument`, `canceled`, `unavailable`. */
    this.code = status.code;
    /** `[{type, value, debug?}]`: google.rpc detail messages, `value` base64 protobuf. */
    this.details = status.details || [];
    this.trailers = status.trailers || {};
  }

  /** The `reason` of the google.rpc.ErrorInfo detail ('' when there is none). */
  get reason() {
    const info = this.details.find((d) => d.type === 'google.rpc.ErrorInfo');
    return info ? errorInfoReason(info.value) : '';
  }

  /** The delay of the google.rpc.RetryInfo detail in ms (null when there is none): when to retry. */
  get retryDelayMs() {
    const info = this.details.find((d) => d.type === 'google.rpc.RetryInfo');
    return info ? retryInfoDelayMs(info.value) : null;
  }
}

/** The socket closed before the handshake finished (`closeCode` as in {@link CloseCode}). */
export class ConnectionClosed extends Error {
  constructor(closeCode, reason) {
    super(`connection closed (${closeCode}${reason ? `: ${reason}` : ''})`);
    this.name = 'ConnectionClosed';
    this.closeCode = closeCode;
    this.reason = reason;
  }
}

/**
 * Open a socket and do the hello/welcome handshake. Resolves to a {@link Connection}.
 * @param {string} url `ws://host/ws` or `wss://host/ws`
 * @param {object} [options]
 * @param {string} [options.token] session token ('' for a sessionless socket)
 * @param {(info: {code: number, reason: string, byClient: boolean}) => void} [options.onclose]
 * @param {(frame: {lastId: number, reason: string}) => void} [options.ongoaway]
 * @param {number} [options.pingIntervalMs] app-level ping period; two missed pongs drop the socket
 * @param {typeof WebSocket} [options.WebSocket] the WebSocket class (the browser's by default)
 */
export function connect(url, options = {}) {
  const WebSocketClass = options.WebSocket || globalThis.WebSocket;
  return new Promise((resolve, reject) => {
    const ws = new WebSocketClass(url, [SUBPROTOCOL]);
    let settled = false;
    ws.onopen = () => {
      if (ws.protocol !== SUBPROTOCOL) {
        ws.close(CloseCode.NORMAL);
        return;
      }
      ws.send(JSON.stringify({ type: 'hello', token: options.token || '' }));
    };
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        frame = null;
      }
      if (!frame || frame.type !== 'welcome') {
        ws.close(CloseCode.NORMAL);
        return;
      }
      settled = true;
      resolve(new Connection(ws, frame, options));
    };
    ws.onclose = (event) => {
      if (!settled) {
        settled = true;
        reject(new ConnectionClosed(event.code, event.reason || (ws.protocol === SUBPROTOCOL ? '' : 'subprotocol refused')));
      }
    };
  });
}

/** One open socket: many concurrent calls of every kind. Made by {@link connect}. */
export class Connection {
  constructor(ws, welcome, options) {
    this._ws = ws;
    /** Session id ('' for a sessionless socket). */
    this.session = welcome.session || '';
    /** The server's limits (`initialCredit`, `sendWindow`, `maxMessageBytes`, ...). */
    this.limits = welcome.limits || {};
    /** Called once when the socket is gone; calls open at that moment end with `unavailable`. */
    this.onclose = options.onclose || null;
    /** Called when the server starts draining: finish up and reconnect. */
    this.ongoaway = options.ongoaway || null;
    this.closed = false;
    this.draining = false;
    this._calls = new Map();
    this._lastId = 0;
    this._pings = new Map();
    this._pingSeq = 0;
    ws.onmessage = (event) => this._receive(event.data);
    ws.onclose = (event) => this._gone(event.code, event.reason, false);
    ws.onerror = () => {}; // always followed by close
    const interval = options.pingIntervalMs ?? 20000;
    let unanswered = 0;
    this._pingTimer = interval > 0 ? setInterval(() => {
      if (unanswered >= 2) {
        this.abort('no pong: the connection is dead');
        return;
      }
      unanswered += 1;
      this.ping().then(() => { unanswered = 0; }, () => {});
    }, interval) : null;
  }

  /** A unary call: resolves to the response message, rejects with {@link RpcError}. */
  async unary(method, message, options = {}) {
    const call = this._open(method, { ...options, message, end: true, credit: 1 });
    let response;
    for await (const msg of call) response = msg;
    return response;
  }

  /** A server-streaming call: iterate the returned {@link Call} for the responses. */
  serverStream(method, message, options = {}) {
    return this._open(method, { ...options, message, end: true });
  }

  /** A bidi (or client-streaming) call: `send`/`end`/`cancel`, and iterate it for the responses. */
  bidi(method, options = {}) {
    return this._open(method, options);
  }

  /** Round trip of an app-level ping; resolves with the time taken in ms. */
  ping() {
    const data = ++this._pingSeq;
    const started = Date.now();
    return new Promise((resolve, reject) => {
      if (this.closed) {
        reject(new ConnectionClosed(CloseCode.NORMAL, 'connection closed'));
        return;
      }
      this._pings.set(data, { resolve: () => resolve(Date.now() - started), reject });
      this._write({ type: 'ping', data });
    });
  }

  /** Close the socket normally (code 1000); open calls end with `unavailable`. */
  close() {
    if (this.closed) return;
    this._ws.close(CloseCode.NORMAL);
    this._gone(CloseCode.NORMAL, 'closed by client', true);
  }

  /**
   * Drop the connection at once, as a network failure would: no further frame is processed
   * and `onclose` reports code 1006. Used on a dead socket, and by tests to simulate a drop.
   */
  abort(reason = 'dropped') {
    if (this.closed) return;
    this._gone(CloseCode.ABNORMAL, reason, false);
    this._ws.close(CloseCode.NORMAL);
  }

  _open(method, { message, end = false, credit, metadata, timeoutMs, signal } = {}) {
    if (this.closed) throw new RpcError({ code: 'unavailable', message: 'connection closed' });
    const id = ++this._lastId;
    const call = new Call(this, id, method, credit ?? this.limits.initialCredit ?? 16, this.limits.sendWindow ?? 16);
    this._calls.set(id, call);
    const frame = { type: 'open', id, method, credit: call._credit };
    if (metadata) frame.metadata = metadata;
    if (timeoutMs) frame.timeoutMs = timeoutMs;
    if (message !== undefined) {
      frame.message = message;
      call._window -= 1;
    }
    if (end) {
      frame.end = true;
      call._ended = true;
    }
    this._write(frame);
    if (signal) {
      if (signal.aborted) call.cancel();
      else signal.addEventListener('abort', () => call.cancel(), { once: true });
    }
    return call;
  }

  _write(frame) {
    if (!this.closed) this._ws.send(JSON.stringify(frame));
  }

  _receive(data) {
    if (this.closed) return;
    const frame = JSON.parse(data);
    const call = this._calls.get(frame.id);
    switch (frame.type) {
      case 'headers': call?._headers(frame.metadata || {}); break;
      case 'msg': call?._push(frame.message); break;
      case 'close':
        this._calls.delete(frame.id);
        call?._finish({ ...frame.status, trailers: frame.trailers || {} });
        break;
      case 'credit': call?._grant(frame.n); break;
      case 'pong': {
        const waiter = this._pings.get(frame.data);
        this._pings.delete(frame.data);
        waiter?.resolve();
        break;
      }
      case 'goaway':
        this.draining = true;
        this.ongoaway?.(frame);
        break;
      default: break; // fields and frame types we do not know are ignored
    }
  }

  _gone(code, reason, byClient) {
    if (this.closed) return;
    this.closed = true;
    if (this._pingTimer) clearInterval(this._pingTimer);
    this._ws.onmessage = null;
    this._ws.onclose = null;
    for (const waiter of this._pings.values()) waiter.reject(new ConnectionClosed(code, reason));
    this._pings.clear();
    const lost = { code: 'unavailable', message: `connection lost (${code})` };
    for (const call of this._calls.values()) call._finish(lost);
    this._calls.clear();
    this.onclose?.({ code, reason, byClient });
  }
}

/**
 * One RPC on a {@link Connection}. Async-iterable over the response messages: the loop ends on
 * status `ok` and throws {@link RpcError} otherwise. Breaking out of the loop cancels the call.
 */
export class Call {
  constructor(conn, id, method, credit, sendWindow) {
    this._conn = conn;
    this.id = id;
    this.method = method;
    this._credit = credit;
    this._consumed = 0;
    this._window = sendWindow;
    this._windowWaiters = [];
    this._queue = [];
    this._wake = null;
    this._ended = false;
    this._status = null;
    let resolveHeaders;
    let resolveStatus;
    /** Resolves to the response headers (`{}` when the call ended without any). */
    this.headers = new Promise((resolve) => { resolveHeaders = resolve; });
    /** Resolves to the final status `{code, message?, details?, trailers}`; never rejects. */
    this.status = new Promise((resolve) => { resolveStatus = resolve; });
    this._resolveHeaders = resolveHeaders;
    this._resolveStatus = resolveStatus;
  }

  /** True once the server's `close` came (or the socket went). */
  get closed() {
    return this._status !== null;
  }

  /** Send a request message; waits while the send window is used up. `end` half-closes after it. */
  async send(message, { end = false } = {}) {
    while (this._window <= 0 && !this.closed) {
      await new Promise((resolve) => this._windowWaiters.push(resolve));
    }
    if (this.closed) throw new RpcError(this._status);
    if (this._ended) throw new Error('send after end');
    this._window -= 1;
    this._ended = end;
    this._conn._write(end ? { type: 'msg', id: this.id, message, end: true } : { type: 'msg', id: this.id, message });
  }

  /** Half-close: no more requests. */
  end() {
    if (this._ended || this.closed) return;
    this._ended = true;
    this._conn._write({ type: 'end', id: this.id });
  }

  /** Cancel the call; it still ends with a `close` (`canceled`) from the server. */
  cancel() {
    if (!this.closed) this._conn._write({ type: 'cancel', id: this.id });
  }

  [Symbol.asyncIterator]() {
    return {
      next: async () => {
        while (this._queue.length === 0 && !this.closed) {
          await new Promise((resolve) => { this._wake = resolve; });
        }
        if (this._queue.length > 0) {
          this._consumed += 1;
          // Grant more as the messages are consumed, in batches of half the credit.
          if (!this.closed && this._consumed * 2 >= Math.max(this._credit, 1)) {
            this._conn._write({ type: 'credit', id: this.id, n: this._consumed });
            this._consumed = 0;
          }
          return { value: this._queue.shift(), done: false };
        }
        if (this._status.code !== 'ok') throw new RpcError(this._status);
        return { value: undefined, done: true };
      },
      return: async () => {
        this.cancel();
        return { value: undefined, done: true };
      },
    };
  }

  _headers(metadata) {
    this._resolveHeaders(metadata);
  }

  _push(message) {
    this._queue.push(message);
    this._notify();
  }

  _grant(n) {
    this._window += n;
    const waiters = this._windowWaiters.splice(0);
    waiters.forEach((resolve) => resolve());
  }

  _finish(status) {
    if (this._status) return;
    this._status = status;
    this._resolveHeaders({});
    this._resolveStatus(status);
    this._grant(0);
    this._notify();
  }

  _notify() {
    const wake = this._wake;
    this._wake = null;
    wake?.();
  }
}

/** The `reason` (field 1) of a base64 google.rpc.ErrorInfo ('' when malformed). */
function errorInfoReason(value) {
  const reason = protoFields(base64Bytes(value)).find((f) => f.field === 1 && f.bytes);
  return reason ? new TextDecoder().decode(reason.bytes) : '';
}

/** google.rpc.RetryInfo's retry_delay (field 1, a Duration: seconds 1, nanos 2) in ms, or null. */
function retryInfoDelayMs(value) {
  const delay = protoFields(base64Bytes(value)).find((f) => f.field === 1 && f.bytes);
  if (!delay) return null;
  let ms = 0;
  for (const f of protoFields(delay.bytes)) {
    if (f.field === 1 && f.varint !== undefined) ms += f.varint * 1000;
    if (f.field === 2 && f.varint !== undefined) ms += f.varint / 1e6;
  }
  return Math.round(ms);
}

function base64Bytes(value) {
  try {
    const b64 = String(value).replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  } catch {
    return new Uint8Array(0);
  }
}

/** The top-level fields of a protobuf message: a tiny reader for varint and length-delimited fields. */
function protoFields(bytes) {
  const fields = [];
  let pos = 0;
  const varint = () => {
    let result = 0;
    let shift = 0;
    let byte;
    do {
      if (pos >= bytes.length) throw new Error('truncated');
      byte = bytes[pos++];
      result += (byte & 0x7f) * 2 ** shift;
      shift += 7;
    } while (byte & 0x80);
    return result;
  };
  try {
    while (pos < bytes.length) {
      const key = varint();
      const wire = key % 8;
      const field = Math.floor(key / 8);
      if (wire === 0) fields.push({ field, varint: varint() });
      else if (wire === 2) {
        const length = varint();
        fields.push({ field, bytes: bytes.subarray(pos, pos + length) });
        pos += length;
      } else if (wire === 1) pos += 8;
      else if (wire === 5) pos += 4;
      else break;
    }
  } catch {
    // a malformed detail yields the fields read so far
  }
  return fields;
}
