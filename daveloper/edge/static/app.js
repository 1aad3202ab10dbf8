/**
 * The chat page: session, streaming chat with tools and citations, stop, upload with progress,
 * scrape log, and resume after a dropped connection. Its only transport is ./client.js.
 *
 * Resume: every chat event carries the conversation log's `seq`. The page remembers the last
 * seq it rendered; after a drop it reconnects (exponential backoff with jitter) and calls
 * AgentService/Watch with `afterSeq` = that seq, so the answer continues where it stopped.
 * Events at or below the last seq are ignored, so nothing is shown twice. A message whose
 * turn never started is resent with the same client message id (the server deduplicates it).
 */
import { connect, ConnectionClosed, FATAL_CLOSE_CODES, RpcError } from './client.js';

const SESSION = '/daveloper.v1.SessionService/';
const AGENT = '/daveloper.v1.AgentService/';
const DOCUMENTS = '/daveloper.v1.DocumentService/';
const SCRAPER = '/daveloper.v1.ScraperService/';
const TOKEN_KEY = 'daveloper.token';
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;
const UPLOAD_CHUNK_BYTES = 64 * 1024;
const FINISH_STATES = {
  FINISH_REASON_CANCELLED: 'cancelled',
  FINISH_REASON_INTERRUPTED: 'interrupted',
};
// Weight of each ingestion stage in the single progress bar (start %, end %).
const STAGE_SPAN = {
  INGEST_STAGE_RECEIVING: [0, 40],
  INGEST_STAGE_PARSING: [40, 50],
  INGEST_STAGE_CHUNKING: [50, 60],
  INGEST_STAGE_EMBEDDING: [60, 90],
  INGEST_STAGE_STORING: [90, 100],
};

const $ = (id) => document.getElementById(id);

const state = {
  token: localStorage.getItem(TOKEN_KEY) || '',
  conn: null,
  connecting: false,
  attempt: 0,
  chat: null,
  conversationId: `conv_${randomHex(10)}`,
  lastSeq: 0,
  current: null, // the running turn: {clientMessageId, text, turnId, view, stopRequested, done}
  turns: new Map(), // turn id → turn
  scrape: null, // {jobId, lastSeq, done, call}
};

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
        conn.ongoaway = () => setStatus('reconnecting', 'server restarting…');
        state.conn = conn;
        state.chat = null;
        $('session-id').textContent = conn.session;
        setStatus('connected', 'connected');
        setEnabled(true);
        onConnected();
        return;
      } catch (error) {
        if (error instanceof ConnectionClosed && FATAL_CLOSE_CODES.has(error.closeCode)) {
          setStatus('failed', `refused: ${error.message}`);
          return;
        }
        // Exponential backoff with jitter: 250 ms, 500 ms, … up to 5 s, each scaled by 0.5–1.
        const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
        const delay = Math.round(ceiling * (0.5 + Math.random() / 2));
        state.attempt += 1;
        setStatus('reconnecting', `offline, retrying in ${(delay / 1000).toFixed(1)} s`);
        await sleep(delay);
      }
    }
  } finally {
    state.connecting = false;
  }
}

function onDisconnect(conn, info) {
  if (state.conn !== conn) return;
  state.conn = null;
  state.chat = null;
  setEnabled(false);
  if (info.byClient) return;
  state.attempt = Math.max(state.attempt, 1);
  setStatus('reconnecting', `connection lost (${info.code}), reconnecting…`);
  // Wait a little (with jitter) before the first retry so that many tabs do not reconnect at once.
  sleep(Math.round(BACKOFF_MIN_MS * (0.5 + Math.random() / 2))).then(reconnect);
}

function onConnected() {
  refreshDocuments();
  resumeTurn();
  resumeScrape();
}

function setStatus(kind, text) {
  const el = $('connection-status');
  el.dataset.state = kind;
  el.textContent = text;
}

function setEnabled(connected) {
  $('send-button').disabled = !connected;
  $('upload-button').disabled = !connected;
  $('scrape-button').disabled = !connected || Boolean(state.scrape && !state.scrape.done);
}

/* ---------- chat ---------- */

/** The Chat stream of the current connection, opened on first use; its events go to handleEvent. */
function chatStream() {
  if (state.chat && !state.chat.closed) return state.chat;
  const chat = state.conn.bidi(`${AGENT}Chat`);
  state.chat = chat;
  (async () => {
    try {
      for await (const response of chat) handleEvent(response.event);
    } catch (error) {
      if (serverLost(error)) resumeSoon();
      else if (!isConnectionLoss(error)) failCurrent(error);
    }
  })();
  return chat;
}

async function sendMessage(text) {
  const turn = {
    clientMessageId: `msg_${randomHex(12)}`, text, turnId: '', stopRequested: false, done: false,
    view: renderTurn(text),
  };
  state.current = turn;
  $('stop-button').disabled = false;
  if (state.conn) await sendTurn(turn);
  // Otherwise resumeTurn sends it once connected.
}

async function sendTurn(turn) {
  await chatStream().send({
    send: { conversationId: state.conversationId, text: turn.text, clientMessageId: turn.clientMessageId },
  });
}

function stopTurn() {
  const turn = state.current;
  if (!turn || turn.done) return;
  turn.stopRequested = true;
  setTurnStatus(turn, 'running', 'stopping…');
  if (turn.turnId) requestCancel(turn);
  // Without a turn id yet, the cancel goes out when turn_started arrives.
}

function requestCancel(turn) {
  if (!state.conn) return; // sent again by resumeTurn once reconnected
  chatStream().send({ cancel: { conversationId: state.conversationId, turnId: turn.turnId } })
    .catch(() => {});
}

/** After a reconnect: continue the running turn from the last seq seen. */
async function resumeTurn() {
  const turn = state.current;
  if (!turn || turn.done || !state.conn) return;
  if (!turn.turnId) {
    // The turn may never have reached the server: resend it; the same client message id makes
    // this idempotent, and already-seen events are skipped by seq.
    await sendTurn(turn).catch(() => {});
    return;
  }
  if (turn.stopRequested) requestCancel(turn);
  const watch = state.conn.serverStream(`${AGENT}Watch`, {
    conversationId: state.conversationId, afterSeq: String(state.lastSeq),
  });
  try {
    for await (const response of watch) {
      handleEvent(response.event);
      if (turn.done) break; // Watch tails forever; leaving the loop cancels it
    }
  } catch (error) {
    if (serverLost(error)) resumeSoon();
    else if (!isConnectionLoss(error)) failCurrent(error);
  }
}

function handleEvent(event) {
  if (!event || event.conversationId !== state.conversationId) return;
  const seq = Number(event.seq || 0);
  if (seq <= state.lastSeq) return; // already rendered (a replay after resume)
  state.lastSeq = seq;
  let turn = state.turns.get(event.turnId);
  if (!turn && event.turnStarted) {
    turn = state.current && state.current.clientMessageId === event.turnStarted.clientMessageId
      ? state.current : null;
    if (!turn) return;
    turn.turnId = event.turnId;
    turn.view.root.dataset.turnId = event.turnId;
    state.turns.set(event.turnId, turn);
    setTurnStatus(turn, 'running', 'thinking…');
    if (turn.stopRequested) requestCancel(turn);
  }
  if (!turn) return;
  const { view } = turn;
  if (event.tokenDelta) {
    view.answer.append(document.createTextNode(event.tokenDelta.text || ''));
    if (!turn.stopRequested) setTurnStatus(turn, 'running', 'answering…');
  } else if (event.toolCall) {
    const item = element('li', 'tool-call', 'calls ');
    item.dataset.testid = 'tool-call';
    item.append(element('code', 'tool-name', event.toolCall.name || ''), ' ',
      element('code', 'tool-args', event.toolCall.argumentsJson || '{}'));
    view.tools.append(item);
  } else if (event.toolResult) {
    const result = event.toolResult;
    const item = element('li', result.isError ? 'tool-result is-error' : 'tool-result',
      `↳ ${result.name || 'tool'}${result.isError ? ' failed' : ''}: ${shorten(result.content || '', 200)}`);
    item.dataset.testid = 'tool-result';
    view.tools.append(item);
  } else if (event.citation) {
    view.citations.append(renderCitation(event.citation));
  } else if (event.turnCompleted) {
    const done = event.turnCompleted;
    const kind = FINISH_STATES[done.finishReason] || 'completed';
    // The deltas must add up to the final text; data-verified lets a reader (or test) check it.
    view.root.dataset.verified = String(view.answer.textContent === (done.text || ''));
    endTurn(turn, kind, kind === 'completed' ? 'done' : kind);
  } else if (event.turnFailed) {
    const failure = event.turnFailed.failure || {};
    endTurn(turn, 'failed', `failed: ${failure.message || failure.reason || 'unknown error'}`);
  }
}

function endTurn(turn, kind, text) {
  turn.done = true;
  setTurnStatus(turn, kind, text);
  turn.view.answer.setAttribute('aria-busy', 'false');
  if (state.current === turn) {
    state.current = null;
    $('stop-button').disabled = true;
  }
}

function failCurrent(error) {
  const turn = state.current;
  if (turn && !turn.done) endTurn(turn, 'failed', `failed: ${error.code || ''} ${error.message}`);
}

function renderTurn(text) {
  const root = element('li', 'turn');
  root.dataset.testid = 'turn';
  const answer = element('div', 'answer');
  answer.dataset.testid = 'answer';
  answer.setAttribute('aria-live', 'polite');
  answer.setAttribute('aria-busy', 'true'); // announced once, when complete
  const tools = element('ul', 'tools');
  tools.setAttribute('aria-label', 'Tool calls');
  const citations = element('ol', 'citations');
  citations.dataset.testid = 'citations';
  citations.setAttribute('aria-label', 'Sources');
  const status = element('p', 'turn-status', 'sending…');
  status.dataset.testid = 'turn-status';
  root.append(element('p', 'user-text', text), tools, answer, citations, status);
  root.dataset.state = 'running';
  $('transcript').append(root);
  root.scrollIntoView({ block: 'end' });
  return { root, answer, tools, citations, status };
}

function renderCitation(citation) {
  const item = element('li', 'citation', `[${citation.index ?? '?'}] `);
  item.dataset.testid = 'citation';
  const title = citation.title || citation.documentId || 'source';
  const url = citation.location && citation.location.url;
  if (url && /^https?:\/\//i.test(url)) {
    const link = element('a', '', title);
    link.href = url;
    link.rel = 'noopener noreferrer';
    link.target = '_blank';
    item.append(link);
  } else {
    item.append(element('span', 'citation-title', title));
  }
  if (citation.snippet) item.title = citation.snippet;
  return item;
}

function setTurnStatus(turn, kind, text) {
  turn.view.root.dataset.state = kind;
  turn.view.status.textContent = text;
}

/* ---------- documents ---------- */

async function refreshDocuments() {
  if (!state.conn) return;
  try {
    const listed = await state.conn.unary(`${DOCUMENTS}ListDocuments`, { pageSize: 100 });
    const list = $('documents');
    list.replaceChildren(...(listed.documents || []).map(renderDocument));
  } catch (error) {
    if (!isConnectionLoss(error)) uploadStatus(`could not list documents: ${error.message}`);
  }
}

function renderDocument(doc) {
  const item = element('li', 'document', `${doc.title || doc.name} (${doc.chunkCount || 0} chunks)`);
  item.dataset.documentId = doc.id;
  return item;
}

async function upload(file) {
  const progress = $('upload-progress');
  progress.value = 0;
  uploadStatus(`uploading ${file.name}…`);
  $('upload-button').disabled = true;
  const call = state.conn.bidi(`${DOCUMENTS}Upload`);
  const reading = (async () => {
    for await (const response of call) {
      const event = response.event || {};
      if (event.progress) {
        const { stage, done = '0', total = '0' } = event.progress;
        const [from, to] = STAGE_SPAN[stage] || [0, 0];
        const fraction = Number(total) > 0 ? Number(done) / Number(total) : 1;
        progress.value = Math.max(progress.value, from + (to - from) * fraction);
        uploadStatus(`${stageName(stage)} ${done}/${total}`);
      } else if (event.stored) {
        progress.value = 100;
        uploadStatus(`stored ${event.stored.name} (${event.stored.chunkCount || 0} chunks)`);
      } else if (event.failed) {
        uploadStatus(`failed: ${event.failed.message || event.failed.reason}`);
      }
    }
  })();
  try {
    await call.send({
      header: { fileName: file.name, mediaType: file.type || '', sizeBytes: String(file.size) },
    });
    for (let offset = 0; offset < file.size; offset += UPLOAD_CHUNK_BYTES) {
      const bytes = new Uint8Array(await file.slice(offset, offset + UPLOAD_CHUNK_BYTES).arrayBuffer());
      await call.send({ chunk: toBase64(bytes) });
    }
    call.end();
    await reading;
  } catch (error) {
    call.cancel();
    await reading.catch(() => {});
    uploadStatus(`upload failed: ${error.code || ''} ${error.message}`);
  } finally {
    $('upload-button').disabled = !state.conn;
  }
  refreshDocuments();
}

function uploadStatus(text) {
  $('upload-status').textContent = text;
}

function stageName(stage) {
  return (stage || '').replace('INGEST_STAGE_', '').toLowerCase();
}

/* ---------- scraping ---------- */

async function startScrape(spec) {
  $('scrape-log').replaceChildren();
  state.scrape = { jobId: '', lastSeq: 0, done: false, call: null };
  setEnabled(Boolean(state.conn));
  $('scrape-cancel').disabled = false;
  logLine('info', `starting scrape of ${spec.urls[0]}`);
  await followJob(state.conn.serverStream(`${SCRAPER}Scrape`, { spec }));
}

async function resumeScrape() {
  const job = state.scrape;
  if (!job || job.done || !job.jobId) return;
  logLine('info', `reconnected, following job ${job.jobId} from event ${job.lastSeq}`);
  await followJob(state.conn.serverStream(`${SCRAPER}WatchJob`, {
    jobId: job.jobId, afterSeq: String(job.lastSeq),
  }));
}

async function followJob(call) {
  const job = state.scrape;
  job.call = call;
  try {
    for await (const response of call) {
      handleJobEvent(job, response.event || {});
      if (job.done) break; // WatchJob tails forever
    }
  } catch (error) {
    if (isConnectionLoss(error) && job.jobId) return; // resumeScrape continues after reconnecting
    logLine('error', `scrape ended: ${error.code} ${error.message}`);
    finishJob(job);
  }
}

function handleJobEvent(job, event) {
  const seq = Number(event.seq || 0);
  if (seq <= job.lastSeq) return;
  job.lastSeq = seq;
  job.jobId = job.jobId || event.jobId || '';
  if (event.queued) {
    logLine('queued', `job ${event.jobId} queued`);
  } else if (event.pageFetched) {
    const page = event.pageFetched;
    logLine('page-fetched', `fetched ${page.httpStatus || ''} ${page.url}${page.title ? ` — ${page.title}` : ''}`
      + ` (${page.sizeBytes || 0} bytes, depth ${page.depth || 0})`);
  } else if (event.pageSkipped) {
    logLine('page-skipped', `skipped ${event.pageSkipped.url} (${event.pageSkipped.reason})`);
  } else if (event.pageFailed) {
    const failure = event.pageFailed.failure || {};
    logLine('page-failed', `failed ${event.pageFailed.url}: ${failure.message || failure.reason || ''}`);
  } else if (event.log) {
    logLine('log', `[${(event.log.level || 'info').toLowerCase()}] ${event.log.message}`);
  } else if (event.progress) {
    logLine('progress', `progress: ${statsText(event.progress.stats)}`);
  } else if (event.finished) {
    const finished = event.finished;
    const outcome = (finished.state || '').replace('JOB_STATE_', '').toLowerCase();
    const failure = finished.failure ? ` — ${finished.failure.message}` : '';
    logLine('finished', `finished: ${outcome}, ${statsText(finished.stats)}${failure}`);
    finishJob(job);
    refreshDocuments();
  }
}

function finishJob(job) {
  job.done = true;
  $('scrape-cancel').disabled = true;
  setEnabled(Boolean(state.conn));
}

async function cancelScrape() {
  const job = state.scrape;
  if (!job || job.done || !state.conn) return;
  if (!job.jobId) {
    job.call?.cancel();
    return;
  }
  try {
    await state.conn.unary(`${SCRAPER}CancelJob`, { jobId: job.jobId });
  } catch (error) {
    logLine('error', `cancel failed: ${error.message}`);
  }
}

function statsText(stats = {}) {
  return `${stats.pagesFetched || 0} fetched, ${stats.pagesSkipped || 0} skipped, `
    + `${stats.pagesFailed || 0} failed, ${stats.documentsIngested || 0} ingested`;
}

function logLine(kind, text) {
  const log = $('scrape-log');
  const item = element('li', '', text);
  item.dataset.kind = kind;
  log.append(item);
  log.scrollTop = log.scrollHeight;
}

/* ---------- small helpers ---------- */

function isConnectionLoss(error) {
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

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function shorten(text, max) {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

function randomHex(bytes) {
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, '0')).join('');
}

function toBase64(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/* ---------- wiring ---------- */

$('chat-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('chat-input');
  const text = input.value.trim();
  if (!text || (state.current && !state.current.done)) return;
  input.value = '';
  sendMessage(text).catch(failCurrent);
});
$('chat-input').addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey) {
    event.preventDefault();
    $('chat-form').requestSubmit();
  }
});
$('stop-button').addEventListener('click', stopTurn);
$('upload-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const file = $('upload-file').files[0];
  if (file && state.conn) upload(file);
});
$('scrape-form').addEventListener('submit', (event) => {
  event.preventDefault();
  if (!state.conn) return;
  startScrape({
    urls: [$('scrape-url').value.trim()],
    maxDepth: Number($('scrape-depth').value) || 0,
    maxPages: Number($('scrape-max-pages').value) || 0,
    sameSiteOnly: true,
    ingest: $('scrape-ingest').checked,
  });
});
$('scrape-cancel').addEventListener('click', cancelScrape);

/** For tests and debugging in the console: drop the socket as a network failure would. */
window.daveloper = Object.freeze({
  dropConnection: () => state.conn?.abort('dropped on purpose'),
  get conversationId() { return state.conversationId; },
  get lastSeq() { return state.lastSeq; },
  get token() { return state.token; },
});

reconnect();
