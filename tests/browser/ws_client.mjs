// A Node.js client written from docs/websocket-protocol.md alone, with only the `ws` package
// (not the page's client.js): it proves the document is enough to write a client.
//
//   node ws_client.mjs http://127.0.0.1:8080 "question"
//
// Flow: sessionless socket → CreateSession (unary) → second socket with the token →
// GetSession (unary) → AgentService/Chat (bidi): send one message, grant credit as
// messages arrive, end once the turn completes, read until the stream's `close`.
// Prints one JSON summary on stdout; exits non-zero on any protocol surprise.
import WebSocket from 'ws';

const SUBPROTOCOL = 'daveloper.v1.json';
const [base, question = 'What do my documents say about the frobnicator?'] = process.argv.slice(2);
const wsUrl = `${base.replace(/^http/, 'ws')}/ws`;

/** An open, greeted socket with a frame queue: `next()` waits for the next frame. */
async function open(token) {
  const ws = new WebSocket(wsUrl, [SUBPROTOCOL]);
  const frames = [];
  const waiters = [];
  let closed = null;
  ws.on('message', (data, isBinary) => {
    if (isBinary) throw new Error('binary frame on the JSON subprotocol');
    const frame = JSON.parse(data.toString());
    const waiter = waiters.shift();
    if (waiter) waiter.resolve(frame); else frames.push(frame);
  });
  ws.on('close', (code, reason) => {
    closed = { code, reason: reason.toString() };
    for (const waiter of waiters.splice(0)) waiter.reject(new Error(`socket closed ${code} ${closed.reason}`));
  });
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  if (ws.protocol !== SUBPROTOCOL) throw new Error(`server chose subprotocol ${ws.protocol}`);
  const send = (frame) => ws.send(JSON.stringify(frame));
  const next = () => {
    if (frames.length) return Promise.resolve(frames.shift());
    if (closed) return Promise.reject(new Error(`socket closed ${closed.code}`));
    return new Promise((resolve, reject) => waiters.push({ resolve, reject }));
  };
  send({ type: 'hello', token });
  const welcome = await next();
  if (welcome.type !== 'welcome') throw new Error(`expected welcome, got ${JSON.stringify(welcome)}`);
  return { ws, send, next, welcome };
}

/** A unary call on stream `id`: open with the message and end, then headers?, msg, close. */
async function unary(socket, id, method, message) {
  socket.send({ type: 'open', id, method, message, end: true });
  let response = null;
  for (;;) {
    const frame = await socket.next();
    if (frame.id !== id) throw new Error(`unexpected frame ${JSON.stringify(frame)}`);
    if (frame.type === 'msg') response = frame.message;
    if (frame.type === 'close') {
      if (frame.status.code !== 'ok') throw new Error(`${method}: ${JSON.stringify(frame.status)}`);
      return response;
    }
  }
}

const anonymous = await open('');
const created = await unary(anonymous, 1, '/daveloper.v1.SessionService/CreateSession', { labels: { client: 'node' } });
anonymous.ws.close(1000);

const socket = await open(created.token);
const got = await unary(socket, 1, '/daveloper.v1.SessionService/GetSession', {});

const CHAT = 3;
const credit = 4; // small on purpose: the server may not send more until we grant
socket.send({ type: 'open', id: CHAT, method: '/daveloper.v1.AgentService/Chat', credit });
socket.send({ type: 'msg', id: CHAT, message: { send: { text: question, clientMessageId: 'node-1' } } });
const summary = {
  sessionMatches: socket.welcome.session === created.session.id && got.session.id === created.session.id,
  limits: socket.welcome.limits,
  frames: {},
  events: [],
  deltas: 0,
  text: '',
  completedText: null,
  finishReason: null,
  headers: false,
  status: null,
  creditsGranted: 0,
};
let unacknowledged = 0;
for (;;) {
  const frame = await socket.next();
  summary.frames[frame.type] = (summary.frames[frame.type] || 0) + 1;
  if (frame.id !== CHAT) throw new Error(`frame for another stream: ${JSON.stringify(frame)}`);
  if (frame.type === 'headers') summary.headers = true;
  if (frame.type === 'msg') {
    const event = frame.message.event;
    const kind = Object.keys(event).find((key) => !['seq', 'conversationId', 'turnId', 'createTime'].includes(key));
    summary.events.push({ seq: event.seq, kind });
    if (event.tokenDelta) {
      summary.deltas += 1;
      summary.text += event.tokenDelta.text;
    }
    if (event.turnCompleted) {
      summary.completedText = event.turnCompleted.text;
      summary.finishReason = event.turnCompleted.finishReason;
      socket.send({ type: 'end', id: CHAT }); // nothing more to send: the server then closes the stream
    }
    // Grant credit as messages are consumed, half the window at a time.
    unacknowledged += 1;
    if (unacknowledged * 2 >= credit) {
      socket.send({ type: 'credit', id: CHAT, n: unacknowledged });
      summary.creditsGranted += unacknowledged;
      unacknowledged = 0;
    }
  }
  if (frame.type === 'close') {
    summary.status = frame.status;
    summary.trailers = frame.trailers || {};
    break;
  }
}
socket.ws.close(1000);
const code = await new Promise((resolve) => socket.ws.once('close', resolve));
summary.closeCode = code;
process.stdout.write(`${JSON.stringify(summary)}\n`);
