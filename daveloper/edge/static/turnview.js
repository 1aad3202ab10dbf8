/**
 * One turn on the page: the user's message, tool calls (one line each, expandable), the answer
 * rendered as Markdown with [n] markers, its sources (passage and location) and its status line.
 */
import { renderMarkdown } from './markdown.js';
import { $, el, testid, shorten, randomHex, durationMs } from './ui.js';

export function newTurn(userText, clientMessageId) {
  const turn = {
    clientMessageId, userText, text: '', turnId: '', done: false, stopRequested: false, stalled: false,
    key: randomHex(4), tools: new Map(), toolNames: [], citations: new Map(), view: null,
  };
  const root = testid(el('li', 'turn'), 'turn');
  root.dataset.state = 'running';
  const user = el('div', 'user-message');
  user.append(el('span', 'sr-only', 'You: '), testid(el('p', 'user-text', userText), 'user-text'));
  const assistant = el('div', 'assistant-message');
  const tools = el('ul', 'tools');
  tools.setAttribute('aria-label', 'Tool calls');
  const answer = testid(el('div', 'answer markdown'), 'answer');
  answer.setAttribute('aria-live', 'polite');
  answer.setAttribute('aria-busy', 'true'); // announced once, when complete
  const status = testid(el('p', 'turn-status', 'sending…'), 'turn-status');
  status.setAttribute('role', 'status');
  const sources = el('section', 'sources');
  sources.hidden = true;
  const heading = el('h3', 'sources-heading', 'Sources');
  heading.id = `sources-${turn.key}`;
  const citations = testid(el('ol', 'citations'), 'citations');
  citations.setAttribute('aria-labelledby', heading.id);
  sources.append(heading, citations);
  assistant.append(tools, answer, sources, status);
  root.append(user, assistant);
  $('transcript').append(root);
  root.scrollIntoView({ block: 'end' });
  turn.view = { root, answer, tools, sources, citations, status };
  return turn;
}

/** Render the answer now; a long one at most once a frame, so a long answer costs no more per delta. */
export function renderAnswer(turn) {
  if (turn.text.length < 4000 || turn.done) {
    renderAnswerNow(turn);
    return;
  }
  if (turn.frame) return;
  turn.frame = requestAnimationFrame(() => {
    turn.frame = 0;
    renderAnswerNow(turn);
  });
}

export function renderAnswerNow(turn) {
  if (turn.frame) {
    cancelAnimationFrame(turn.frame);
    turn.frame = 0;
  }
  const { answer } = turn.view;
  const nearBottom = isNearBottom();
  answer.replaceChildren(renderMarkdown(turn.text, { citation: (n) => citationMarker(turn, n) }));
  if (nearBottom) turn.view.root.scrollIntoView({ block: 'end' });
}

function isNearBottom() {
  const scroller = document.scrollingElement;
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 160;
}

function citationMarker(turn, n) {
  const link = testid(el('a', 'cite', `[${n}]`), 'cite-marker');
  link.href = `#src-${turn.key}-${n}`;
  link.dataset.index = String(n);
  link.setAttribute('aria-label', `source ${n}`);
  return link;
}

function argumentsSummary(json) {
  try {
    const args = JSON.parse(json || '{}');
    return Object.entries(args).map(([key, value]) => `${key}: ${typeof value === 'string' ? `“${value}”` : JSON.stringify(value)}`).join(', ');
  } catch {
    return json || '';
  }
}

function prettyJson(json) {
  try {
    return JSON.stringify(JSON.parse(json || '{}'), null, 2);
  } catch {
    return json || '';
  }
}

export function addToolCall(turn, call) {
  turn.toolNames.push(call.name || '');
  const item = testid(el('li', 'tool'), 'tool-call');
  item.dataset.state = 'running';
  const details = el('details');
  const summary = el('summary');
  summary.append(el('span', 'tool-icon', '⚙'), el('code', 'tool-name', call.name || 'tool'), ' ',
    el('span', 'tool-args-short', shorten(argumentsSummary(call.argumentsJson), 90)), ' ',
    el('span', 'tool-state', 'running…'));
  const body = el('div', 'tool-detail');
  body.append(el('h4', '', 'Arguments'), el('pre', 'tool-args', prettyJson(call.argumentsJson)));
  details.append(summary, body);
  item.append(details);
  turn.view.tools.append(item);
  turn.tools.set(call.callId || `call-${turn.tools.size}`, item);
}

export function addToolResult(turn, result) {
  let item = turn.tools.get(result.callId);
  if (!item) {
    addToolCall(turn, { callId: result.callId, name: result.name, argumentsJson: '{}' });
    item = turn.tools.get(result.callId);
  }
  const ms = durationMs(result.duration);
  item.dataset.state = result.isError ? 'failed' : 'done';
  item.querySelector('.tool-state').textContent = result.isError ? 'failed'
    : `done${ms !== null ? ` in ${ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`}` : ''}`;
  const body = item.querySelector('.tool-detail');
  body.append(el('h4', '', result.isError ? 'Error' : 'Result'),
    testid(el('pre', result.isError ? 'tool-result is-error' : 'tool-result', result.content || '(empty)'), 'tool-result'));
}

function locationText(location = {}) {
  const parts = [];
  if (location.headingPath?.length) parts.push(location.headingPath.join(' › '));
  if (location.page) parts.push(`page ${location.page}`);
  if (location.startLine) {
    parts.push(location.endLine && location.endLine !== location.startLine
      ? `lines ${location.startLine}–${location.endLine}` : `line ${location.startLine}`);
  }
  return parts.join(' · ');
}

export function addCitation(turn, citation) {
  const n = Number(citation.index || turn.citations.size + 1);
  if (turn.citations.has(n)) return;
  turn.citations.set(n, citation);
  const item = testid(el('li', 'citation'), 'citation');
  item.id = `src-${turn.key}-${n}`;
  item.dataset.index = String(n);
  const details = el('details');
  const summary = el('summary');
  const title = citation.title || citation.documentId || 'source';
  summary.append(`[${n}] `, el('span', 'citation-title', title));
  const where = locationText(citation.location);
  if (where) summary.append(' ', el('span', 'citation-where', `— ${where}`));
  const body = el('div', 'citation-body');
  if (citation.snippet) body.append(testid(el('blockquote', 'citation-passage', citation.snippet), 'citation-passage'));
  const origin = el('p', 'citation-origin');
  const url = citation.location?.url;
  if (url && /^https?:\/\//i.test(url)) {
    const link = el('a', '', url);
    link.href = url;
    link.rel = 'noopener noreferrer nofollow';
    link.target = '_blank';
    origin.append('From ', link);
  } else {
    origin.append('From the document ', el('strong', '', title.split(' > ')[0]));
  }
  if (where) origin.append(el('br'), `at ${where}`);
  body.append(origin);
  details.append(summary, body);
  item.append(details);
  // Keep the list in marker order whatever order the citations came in.
  const after = [...turn.view.citations.children].find((other) => Number(other.dataset.index) > n);
  turn.view.citations.insertBefore(item, after || null);
  turn.view.sources.hidden = false;
}

export function setTurnStatus(turn, kind, text) {
  turn.view.root.dataset.state = kind;
  // The status is a live region: write it only when it changes, so it is announced once.
  if (turn.view.status.textContent !== text) turn.view.status.textContent = text;
}

/** Clicks in the transcript: a [n] marker opens its source; Copy copies a code block. */
export function wireTranscript(transcript) {
  transcript.addEventListener('click', (event) => {
    const marker = event.target.closest('a.cite');
    if (marker) {
      event.preventDefault();
      const source = document.getElementById(marker.getAttribute('href').slice(1));
      if (!source) return;
      source.querySelector('details').open = true;
      source.classList.add('flash');
      setTimeout(() => source.classList.remove('flash'), 1200);
      source.scrollIntoView({ block: 'nearest' });
      source.querySelector('summary').focus();
      return;
    }
    const copy = event.target.closest('.md-copy');
    if (copy) {
      const code = copy.closest('figure').querySelector('code').textContent;
      navigator.clipboard.writeText(code).then(
        () => { copy.textContent = 'Copied'; },
        () => { copy.textContent = 'Copy failed'; },
      ).finally(() => setTimeout(() => { copy.textContent = 'Copy'; }, 1500));
    }
  });
}
