/**
 * The chat page: conversations, streamed answers rendered as Markdown with their sources,
 * documents, crawl and GitHub jobs, session usage. Its only transport is ./client.js.
 *
 * Resume: every chat event carries the conversation log's `seq`. The page remembers the last
 * seq it rendered; after a drop it reconnects (exponential backoff with jitter, shown as a
 * countdown) and calls AgentService/Watch with `afterSeq` = that seq, so the answer continues
 * where it stopped. Events at or below the last seq are ignored, so nothing is shown twice. A
 * message whose turn never started is resent with the same client message id (the server
 * deduplicates it). The URL names the open conversation (`?c=<id>`): a reload reopens it from
 * GetConversation and follows a turn still running with Watch.
 *
 * Stalls: long streams carry a heartbeat every `limits.heartbeatMs` of quiet. When a running
 * turn hears nothing (no event, no heartbeat) for 2.5 intervals the page says "stalled" and
 * pings the socket; no pong drops the socket (and reconnects), a pong restarts the stream.
 */
import { connect, ConnectionClosed, FATAL_CLOSE_CODES, RpcError } from './client.js';
import {
  $, el, testid, formatBytes, formatTime, shorten, randomHex, sleep, durationMs, describeError, retryDelayOf,
} from './ui.js';
import { Documents } from './documents.js';
import { Jobs } from './jobs.js';
import {
  newTurn, renderAnswer, renderAnswerNow, addToolCall, addToolResult, addCitation, setTurnStatus, wireTranscript,
} from './turnview.js';

const SESSION = '/daveloper.v1.SessionService/';
const AGENT = '/daveloper.v1.AgentService/';
const TOKEN_KEY = 'daveloper.token';
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 8000;
const DEFAULT_HEARTBEAT_MS = 15000;
const FINISH = {
  FINISH_REASON_CANCELLED: ['cancelled', 'stopped'],
  FINISH_REASON_INTERRUPTED: ['interrupted', 'interrupted: the server stopped before the answer was finished'],
  FINISH_REASON_LENGTH: ['completed', 'cut off at the token limit'],
  FINISH_REASON_TOOL_LIMIT: ['completed', 'stopped at the tool-call limit'],
};

const state = {
  token: localStorage.getItem(TOKEN_KEY) || '',
  conn: null,
  limits: {},
  connecting: false,
  attempt: 0,
  retryNow: null, // resolves the reconnect countdown early
  chat: null, // the Chat stream of this connection
  watch: null, // the Watch call following the running turn
  conversationId: '', // the open conversation ('' until the first message of a new one)
  loaded: false, // the open conversation's stored turns are on the page
  lastSeq: 0, // highest seq rendered in the open conversation
  turns: new Map(), // turn id → turn (open conversation)
  running: null, // the open conversation's turn in flight: {clientMessageId, text, turnId, view, done, ...}
  lastActivity: 0, // when the running turn's stream last said anything (event or heartbeat)
  lastEvent: 0, // when it last carried an event
  probing: false,
  conversations: [],
  retryUntil: 0, // rate limited until then
};

const page = {
  get conn() { return state.conn; },
  refreshUsage: () => refreshUsage(),
};
const documents = new Documents(page);
const jobs = new Jobs(page, () => documents.refresh());

/* ---------- connection and session ---------- */

function wsUrl() {
  return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws`;
}

async function openSession() {
  if (state.token) {
    try {
      return await connect(wsUrl(), { token: state.token });
    } catch (error) {
      if (!(error instanceof ConnectionClosed && error.closeCode === 4401)) throw error;
      // The token was refused (expired or deleted session): start a new session.
      state.token = '';
      localStorage.removeItem(TOKEN_KEY);
    }
  }
  const anonymous = await connect(wsUrl(), { token: '' });
  try {
    const created = await anonymous.unary(`${SESSION}CreateSession`, { labels: { client: 'web' } });
    state.token = created.token;
    localStorage.setItem(TOKEN_KEY, state.token);
  } finally {
    anonymous.close();
  }
  return connect(wsUrl(), { token: state.token });
}

async function reconnect() {
  if (state.connecting) return;
  state.connecting = true;
  try {
    for (;;) {
      setStatus(state.attempt ? 'reconnecting' : 'connecting', state.attempt ? 'reconnecting…' : 'connecting…');
      try {
        const conn = await openSession();
        state.attempt = 0;
        conn.onclose = (info) => onDisconnect(conn, info);
        conn.ongoaway = () => setStatus('reconnecting', 'the server is restarting…');
        state.conn = conn;
        state.limits = conn.limits || {};
        state.chat = null;
        $('session-id').textContent = conn.session;
        setStatus('connected', 'connected');
        onConnected();
        return;
      } catch (error) {
        if (error instanceof ConnectionClosed && FATAL_CLOSE_CODES.has(error.closeCode)) {
          setStatus('failed', `refused by the server (${error.closeCode}): reload the page`);
          return;
        }
        // Exponential backoff with jitter: 250 ms, 500 ms, … up to 8 s, each scaled by 0.5–1.
        const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
        state.attempt += 1;
        await countdown(Math.round(ceiling * (0.5 + Math.random() / 2)));
      }
    }
  } finally {
    state.connecting = false;
  }
}

/** Wait `ms`, showing "offline, retrying in N s" each second; "Retry now" ends it early. */
async function countdown(ms) {
  const end = Date.now() + ms;
  const retry = $('retry-now');
  const early = new Promise((resolve) => { state.retryNow = resolve; });
  retry.hidden = ms < 1500;
  while (Date.now() < end) {
    const left = end - Date.now();
    setStatus('reconnecting', `offline — retrying in ${Math.ceil(left / 1000)} s`);
    // eslint-disable-next-line no-await-in-loop
    if (await Promise.race([sleep(Math.min(1000, left)).then(() => false), early.then(() => true)])) break;
  }
  state.retryNow = null;
  retry.hidden = true;
}

function onDisconnect(conn, info) {
  if (state.conn !== conn) return;
  state.conn = null;
  state.chat = null;
  state.watch = null;
  updateComposer();
  documents.setConnected(false);
  jobs.setConnected(false);
  if (info.byClient) return;
  state.attempt = Math.max(state.attempt, 1);
  setStatus('reconnecting', `connection lost (${info.code}), reconnecting…`);
  // Wait a little (with jitter) before the first retry so that many tabs do not reconnect at once.
  sleep(Math.round(BACKOFF_MIN_MS * (0.5 + Math.random() / 2))).then(reconnect);
}

function onConnected() {
  updateComposer();
  documents.setConnected(true);
  jobs.setConnected(true);
  refreshConversations();
  refreshUsage();
  if (state.conversationId && !state.loaded) loadConversation(state.conversationId);
  else resumeTurn();
}

/** The open conversation's title, on the page and in the tab (and so in the history list). */
function setTitle(title) {
  $('chat-title').textContent = title;
  document.title = `${shorten(title, 60)} · Daveloper`;
}

function setStatus(kind, text) {
  const status = $('connection-status');
  status.dataset.state = kind;
  status.textContent = text;
}

function heartbeatMs() {
  const ms = Number(state.limits.heartbeatMs);
  return Number.isFinite(ms) && ms > 0 ? ms : DEFAULT_HEARTBEAT_MS;
}

/* ---------- usage ---------- */

const QUOTA_NAMES = {
  documents: 'Documents', stored_bytes: 'Stored', concurrent_turns: 'Answers at once',
  concurrent_jobs: 'Jobs at once', scrape_pages_today: 'Pages fetched today', sockets: 'Connections',
};

async function refreshUsage() {
  if (!state.conn) return;
  let reply;
  try {
    reply = await state.conn.unary(`${SESSION}GetSession`, {});
  } catch {
    return; // shown again on the next refresh
  }
  const body = $('usage-body');
  const table = el('table', 'usage-table');
  const caption = el('caption', '', reply.session?.expireTime
    ? `Session expires ${new Date(reply.session.expireTime).toLocaleString()}` : 'Session');
  table.append(caption);
  for (const quota of reply.quotas || []) {
    const bytes = quota.name.endsWith('bytes');
    const used = bytes ? formatBytes(quota.used) : String(quota.used || 0);
    const limit = bytes ? formatBytes(quota.limit) : String(quota.limit || 0);
    const row = el('tr');
    row.dataset.quota = quota.name;
    row.append(el('th', '', QUOTA_NAMES[quota.name] || quota.name), el('td', '', `${used} of ${limit}`));
    table.append(row);
  }
  for (const rate of reply.rateLimits || []) {
    const row = el('tr');
    row.dataset.rate = rate.methodClass;
    row.append(el('th', '', `${rate.methodClass.replace(/_/g, ' ')} now`),
      el('td', '', `${Math.floor(rate.available || 0)} of ${rate.burst} (${Math.round(rate.perMinute || 0)}/min)`));
    table.append(row);
  }
  body.replaceChildren(table);
  const docs = (reply.quotas || []).find((q) => q.name === 'documents');
  $('usage-summary').textContent = docs ? `Usage · ${docs.used || 0} docs` : 'Usage';
}

/* ---------- conversations ---------- */

function conversationFromUrl() {
  return new URLSearchParams(location.search).get('c') || '';
}

async function refreshConversations() {
  if (!state.conn) return;
  try {
    const reply = await state.conn.unary(`${AGENT}ListConversations`, { pageSize: 100 });
    state.conversations = reply.conversations || [];
  } catch (error) {
    if (!lostConnection(error)) showChatError(describeError(error));
    return;
  }
  renderConversationList();
}

function renderConversationList() {
  const list = $('conversation-list');
  const items = state.conversations.map((conversation) => {
    const item = testid(el('li', 'conversation'), 'conversation');
    item.dataset.conversationId = conversation.id;
    const open = el('a', 'conversation-open');
    open.href = `?c=${encodeURIComponent(conversation.id)}`;
    open.append(el('span', 'conversation-title', conversation.title || 'Untitled'),
      el('span', 'conversation-time', formatTime(conversation.updateTime || conversation.createTime)));
    if (conversation.id === state.conversationId) open.setAttribute('aria-current', 'page');
    const remove = testid(el('button', 'icon-button conversation-delete', '×'), 'delete-conversation');
    remove.type = 'button';
    remove.title = 'Delete conversation';
    remove.setAttribute('aria-label', `Delete conversation “${shorten(conversation.title, 40)}”`);
    item.append(open, remove);
    return item;
  });
  if (!items.length) items.push(el('li', 'empty', 'No conversations yet.'));
  list.replaceChildren(...items);
}

/** Show a conversation (or a new, empty one with id ''); `push` adds a history entry. */
function openConversation(id, { push = true } = {}) {
  if (push) {
    const url = id ? `?c=${encodeURIComponent(id)}` : location.pathname;
    history.pushState({ c: id }, '', url);
  }
  state.watch?.cancel();
  state.watch = null;
  state.conversationId = id;
  state.loaded = !id;
  state.lastSeq = 0;
  state.turns = new Map();
  state.running = null;
  $('transcript').replaceChildren();
  showChatError('');
  const known = state.conversations.find((c) => c.id === id);
  setTitle(id ? (known?.title || 'Conversation') : 'New conversation');
  renderConversationList();
  updateComposer();
  closeNavOnNarrow();
  if (id && state.conn) loadConversation(id);
}

async function loadConversation(id) {
  let reply;
  try {
    reply = await state.conn.unary(`${AGENT}GetConversation`, { conversationId: id });
  } catch (error) {
    if (state.conversationId !== id || lostConnection(error)) return;
    if (error.code === 'not_found') {
      state.loaded = true;
      showChatError('This conversation does not exist (any more): start a new one below.');
    } else {
      showChatError(describeError(error));
    }
    return;
  }
  if (state.conversationId !== id || state.loaded) return;
  state.loaded = true;
  setTitle(reply.conversation?.title || 'Conversation');
  for (const stored of reply.turns || []) {
    const turn = newTurn(stored.userText, stored.clientMessageId);
    turn.turnId = stored.id;
    turn.view.root.dataset.turnId = stored.id;
    state.turns.set(stored.id, turn);
    if (stored.state === 'TURN_STATE_RUNNING') {
      // Follow it live: Watch from the start (its tool calls, text and sources come again),
      // skipping the events of the turns already shown.
      state.running = turn;
      setTurnStatus(turn, 'running', 'answering…');
      continue;
    }
    (stored.toolCalls || []).forEach((call) => addToolCall(turn, call));
    (stored.toolResults || []).forEach((result) => addToolResult(turn, result));
    (stored.citations || []).forEach((citation) => addCitation(turn, citation));
    turn.text = stored.assistantText || '';
    renderAnswerNow(turn);
    if (stored.state === 'TURN_STATE_FAILED') {
      endTurn(turn, 'failed', `failed: ${describeError(stored.failure || {})}`);
    } else {
      const [kind, words] = FINISH[stored.finishReason] || ['completed', 'done'];
      endTurn(turn, kind, kind === 'completed' && words === 'done' ? doneText(stored) : words);
    }
  }
  updateComposer();
  if (state.running) {
    state.running.sentAt = Date.now();
    state.lastActivity = Date.now();
    resumeTurn();
  }
  $('transcript').lastElementChild?.scrollIntoView({ block: 'end' });
}

async function deleteConversation(id) {
  const conversation = state.conversations.find((c) => c.id === id);
  // eslint-disable-next-line no-alert
  if (!window.confirm(`Delete the conversation “${shorten(conversation?.title || id, 60)}”? This cannot be undone.`)) return;
  try {
    await state.conn.unary(`${AGENT}DeleteConversation`, { conversationId: id });
  } catch (error) {
    showChatError(describeError(error));
    return;
  }
  state.conversations = state.conversations.filter((c) => c.id !== id);
  if (state.conversationId === id) openConversation('');
  renderConversationList();
}

/* ---------- chat ---------- */

/** The Chat stream of the current connection, opened on first use; its events go to handleEvent. */
function chatStream() {
  if (state.chat && !state.chat.closed) return state.chat;
  const chat = state.conn.bidi(`${AGENT}Chat`);
  state.chat = chat;
  (async () => {
    try {
      for await (const response of chat) {
        heard(response);
        if (response.event) handleEvent(response.event);
      }
    } catch (error) {
      if (chat.abandoned || lostConnection(error)) return;
      if (serverLost(error)) {
        resumeSoon();
        return;
      }
      // The stream ended with an error (rate limited, quota): the message that was not started fails.
      failPending(error);
      resumeSoon(); // a turn that was running on this stream continues through Watch
    } finally {
      if (state.chat === chat) state.chat = null;
    }
  })();
  return chat;
}

async function sendMessage(text) {
  if (!state.conversationId) {
    // A new conversation is named by the page; the server creates it with the first turn.
    state.conversationId = `conv_${randomHex(10)}`;
    state.loaded = true;
    // The bare page (a new conversation) becomes this conversation's entry rather than a second one.
    const method = history.state?.c ? 'pushState' : 'replaceState';
    history[method]({ c: state.conversationId }, '', `?c=${state.conversationId}`);
    setTitle(shorten(text, 80));
  }
  showChatError('');
  const turn = newTurn(text, `msg_${randomHex(12)}`);
  turn.sentAt = Date.now();
  state.lastActivity = Date.now();
  state.running = turn;
  updateComposer();
  if (state.conn) await sendTurn(turn);
  // Otherwise resumeTurn sends it once connected.
}

async function sendTurn(turn) {
  await chatStream().send({
    send: { conversationId: state.conversationId, text: turn.userText, clientMessageId: turn.clientMessageId },
  });
}

function stopTurn() {
  const turn = state.running;
  if (!turn || turn.done) return;
  turn.stopRequested = true;
  setTurnStatus(turn, 'running', 'stopping…');
  if (turn.turnId) requestCancel(turn);
  // Without a turn id yet, the cancel goes out when turn_started arrives.
}

function requestCancel(turn) {
  if (!state.conn) return; // sent again by resumeTurn once reconnected
  chatStream().send({ cancel: { conversationId: state.conversationId, turnId: turn.turnId } }).catch(() => {});
}

/** After a reconnect (or a stream that ended): continue the running turn from the last seq seen. */
async function resumeTurn() {
  const turn = state.running;
  if (!turn || turn.done || !state.conn) return;
  if (!turn.turnId) {
    // The turn may never have reached the server: resend it; the same client message id makes
    // this idempotent, and already-seen events are skipped by seq.
    await sendTurn(turn).catch(() => {});
    return;
  }
  if (turn.stopRequested) requestCancel(turn);
  state.watch?.cancel();
  const conversationId = state.conversationId;
  const watch = state.conn.serverStream(`${AGENT}Watch`, { conversationId, afterSeq: String(state.lastSeq) });
  state.watch = watch;
  try {
    for await (const response of watch) {
      heard(response);
      if (response.event) handleEvent(response.event);
      if (turn.done) break; // Watch tails forever; leaving the loop cancels it
    }
  } catch (error) {
    if (watch.abandoned || state.watch !== watch || error.code === 'canceled' || lostConnection(error)) return;
    if (serverLost(error)) resumeSoon();
    else if (state.running === turn) endTurn(turn, 'failed', `failed: ${describeError(error)}`);
  } finally {
    if (state.watch === watch) state.watch = null;
  }
}

/** Anything heard on a stream that carries the running turn: it is alive. */
function heard(response) {
  const now = Date.now();
  state.lastActivity = now;
  if (response.event) state.lastEvent = now;
  const turn = state.running;
  if (turn && turn.stalled) {
    turn.stalled = false;
    turn.view.root.dataset.stalled = 'false';
    setTurnStatus(turn, 'running', turn.text ? 'answering…' : 'thinking…');
  }
  if (response.heartbeat && turn && !turn.done && turn.turnId && now - state.lastEvent > heartbeatMs()) {
    const quiet = Math.round((now - Math.max(state.lastEvent, turn.sentAt || 0)) / 1000);
    setTurnStatus(turn, 'running', `still working (the server is alive; ${quiet} s since the last update)…`);
  }
}

function handleEvent(event) {
  if (!event || event.conversationId !== state.conversationId) return;
  const seq = Number(event.seq || 0);
  if (seq <= state.lastSeq) return; // already rendered (a replay after resume)
  state.lastSeq = seq;
  let turn = state.turns.get(event.turnId);
  if (!turn && event.turnStarted) {
    const running = state.running;
    if (running && !running.turnId && running.clientMessageId === event.turnStarted.clientMessageId) {
      turn = running;
    } else {
      // A turn started elsewhere (another tab): show it too.
      turn = newTurn(event.turnStarted.userText || '', event.turnStarted.clientMessageId);
      if (!state.running || state.running.done) state.running = turn;
    }
    turn.turnId = event.turnId;
    turn.view.root.dataset.turnId = event.turnId;
    state.turns.set(event.turnId, turn);
    setTurnStatus(turn, 'running', 'thinking…');
    if (turn.stopRequested) requestCancel(turn);
    if (!state.conversations.some((c) => c.id === state.conversationId)) refreshConversations();
    updateComposer();
  }
  if (!turn || turn.done) return; // a finished turn, shown from GetConversation already
  if (event.tokenDelta) {
    turn.text += event.tokenDelta.text || '';
    renderAnswer(turn);
    if (!turn.stopRequested) setTurnStatus(turn, 'running', 'answering…');
  } else if (event.toolCall) {
    addToolCall(turn, event.toolCall);
    setTurnStatus(turn, 'running', `running ${event.toolCall.name}…`);
  } else if (event.toolResult) {
    addToolResult(turn, event.toolResult);
  } else if (event.citation) {
    addCitation(turn, event.citation);
  } else if (event.turnCompleted) {
    const done = event.turnCompleted;
    // The deltas must add up to the final text; data-verified lets a reader (or test) check it.
    turn.view.root.dataset.verified = String(turn.text === (done.text || ''));
    turn.text = done.text || turn.text;
    renderAnswerNow(turn);
    const [kind, words] = FINISH[done.finishReason] || ['completed', 'done'];
    endTurn(turn, kind, kind === 'completed' && words === 'done' ? doneText(done) : words);
  } else if (event.turnFailed) {
    const failed = event.turnFailed;
    if (failed.partialText && failed.partialText.length > turn.text.length) {
      turn.text = failed.partialText;
      renderAnswerNow(turn);
    }
    endTurn(turn, 'failed', `failed: ${describeError(failed.failure || {})}`);
  }
}

function doneText(done) {
  const parts = ['done'];
  const seconds = durationMs(done.duration);
  if (seconds !== null) parts.push(`${(seconds / 1000).toFixed(1)} s`);
  if (done.usage?.totalTokens) parts.push(`${done.usage.totalTokens} tokens`);
  return parts.join(' · ');
}

function endTurn(turn, kind, text) {
  if (turn.frame) renderAnswerNow(turn);
  turn.done = true;
  turn.stalled = false;
  turn.view.root.dataset.stalled = 'false';
  setTurnStatus(turn, kind, text);
  turn.view.answer.setAttribute('aria-busy', 'false');
  turn.view.root.querySelectorAll('.tool[data-state="running"]').forEach((tool) => {
    tool.dataset.state = 'unfinished';
    tool.querySelector('.tool-state').textContent = 'no result';
  });
  if (state.running === turn) {
    state.running = null;
    if (state.watch) state.watch.cancel();
    refreshConversations();
    refreshUsage();
    if (kind === 'completed' && turn.toolNames?.some((name) => name !== 'search_documents')) documents.refresh();
  }
  updateComposer();
}

/** The turn that had not started when its stream failed (rate limited, …): fail it in words. */
function failPending(error) {
  const turn = state.running;
  if (!turn || turn.done || turn.turnId) return;
  const words = describeError(error);
  endTurn(turn, 'failed', 'not sent');
  const retryMs = retryDelayOf(error);
  if (retryMs) state.retryUntil = Date.now() + retryMs;
  showChatError(words, retryMs);
  const input = $('chat-input');
  if (!input.value.trim()) input.value = turn.userText; // nothing typed is lost
  updateComposer();
}

/* ---------- composer and stalls ---------- */

function updateComposer() {
  const running = Boolean(state.running && !state.running.done);
  const limited = state.retryUntil > Date.now();
  $('send-button').disabled = !state.conn || running || limited;
  $('stop-button').disabled = !running;
  $('chat-form').dataset.busy = String(running);
}

let errorTimer = null;

/** A message above the composer; with `retryMs`, a countdown that re-enables Send at zero. */
function showChatError(text, retryMs) {
  const box = $('chat-error');
  clearInterval(errorTimer);
  box.textContent = text;
  box.hidden = !text;
  if (!retryMs) return;
  const tick = () => {
    const left = state.retryUntil - Date.now();
    if (left <= 0) {
      clearInterval(errorTimer);
      box.textContent = 'You can send again.';
      updateComposer();
      return;
    }
    box.textContent = text.replace(/(try again in )\d+( s)/i, `$1${Math.ceil(left / 1000)}$2`);
  };
  errorTimer = setInterval(tick, 1000);
}

function checkStall() {
  const turn = state.running;
  if (!turn || turn.done || !state.conn || !turn.sentAt) return;
  const quiet = Date.now() - state.lastActivity;
  if (quiet < heartbeatMs() * 2.5) return;
  if (!turn.stalled) {
    turn.stalled = true;
    turn.view.root.dataset.stalled = 'true';
    setTurnStatus(turn, 'running', `stalled: nothing from the server for ${Math.round(quiet / 1000)} s; checking the connection…`);
  }
  probeConnection();
}

/** A silent stream: ping the socket. No pong: drop it (and reconnect). A pong: restart the stream. */
async function probeConnection() {
  const conn = state.conn;
  if (state.probing || !conn) return;
  state.probing = true;
  try {
    const limit = Math.min(5000, Math.max(1000, heartbeatMs()));
    const answered = await Promise.race([conn.ping().then(() => true, () => false), sleep(limit).then(() => false)]);
    if (state.conn !== conn) return;
    if (!answered) {
      conn.abort('no answer from the server');
      return;
    }
    if (state.chat) {
      state.chat.abandoned = true;
      state.chat.cancel();
      state.chat = null;
    }
    if (state.watch) {
      state.watch.abandoned = true;
      state.watch.cancel();
      state.watch = null;
    }
    state.lastActivity = Date.now();
    resumeTurn();
  } finally {
    state.probing = false;
  }
}

/* ---------- small helpers ---------- */

function lostConnection(error) {
  return error instanceof RpcError && error.code === 'unavailable' && !state.conn;
}

/** A stream ended `unavailable` while the socket is fine: the server behind the edge went away. */
function serverLost(error) {
  return error instanceof RpcError && error.code === 'unavailable' && Boolean(state.conn);
}

/** Continue the running turn from the last seq seen, on whichever server the edge picks next. */
function resumeSoon() {
  setTimeout(() => { resumeTurn().catch(() => {}); }, 200 + Math.random() * 300);
}

function closeNavOnNarrow() {
  if (window.matchMedia('(max-width: 56rem)').matches) setNav(false);
}

function setNav(open) {
  document.body.dataset.nav = open ? 'open' : 'closed';
  $('nav-toggle').setAttribute('aria-expanded', String(open));
}

/* ---------- wiring ---------- */

$('chat-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('chat-input');
  const text = input.value.trim();
  if (!text || $('send-button').disabled) return;
  input.value = '';
  sendMessage(text).catch((error) => failPending(error));
});
$('chat-input').addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $('chat-form').requestSubmit();
  }
});
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && state.running && !state.running.done) {
    event.preventDefault();
    stopTurn();
  }
});
$('stop-button').addEventListener('click', stopTurn);
$('retry-now').addEventListener('click', () => state.retryNow?.());
$('usage-summary').parentElement.addEventListener('toggle', (event) => { if (event.target.open) refreshUsage(); });
$('new-conversation').addEventListener('click', () => {
  openConversation('');
  $('chat-input').focus();
});
$('nav-toggle').addEventListener('click', () => setNav(document.body.dataset.nav !== 'open'));
$('conversation-list').addEventListener('click', (event) => {
  const item = event.target.closest('[data-conversation-id]');
  if (!item) return;
  event.preventDefault();
  const id = item.dataset.conversationId;
  if (event.target.closest('.conversation-delete')) deleteConversation(id);
  else if (id !== state.conversationId) openConversation(id);
  else closeNavOnNarrow();
});
wireTranscript($('transcript'));
window.addEventListener('popstate', () => {
  const id = conversationFromUrl();
  if (id !== state.conversationId) openConversation(id, { push: false });
});
setInterval(checkStall, 1000);
setInterval(() => { if (state.retryUntil && state.retryUntil <= Date.now()) { state.retryUntil = 0; updateComposer(); } }, 1000);

/** For tests and debugging in the console: drop the socket as a network failure would. */
window.daveloper = Object.freeze({
  dropConnection: () => state.conn?.abort('dropped on purpose'),
  get conversationId() { return state.conversationId; },
  get lastSeq() { return state.lastSeq; },
  get token() { return state.token; },
  get heartbeatMs() { return heartbeatMs(); },
});

const narrow = window.matchMedia('(max-width: 56rem)');
setNav(!narrow.matches);
narrow.addEventListener('change', () => setNav(!narrow.matches));
state.conversationId = conversationFromUrl();
state.loaded = !state.conversationId;
setTitle(state.conversationId ? 'Conversation' : 'New conversation');
updateComposer();
reconnect();
