/** Small DOM and wording helpers shared by the page's modules. */
import { RpcError } from './client.js';

export const $ = (id) => document.getElementById(id);

/** A new element; `text` becomes its textContent (never HTML). */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

export function testid(node, id) {
  node.dataset.testid = id;
  return node;
}

export function formatBytes(value) {
  const n = Number(value || 0);
  if (n < 1024) return `${n} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let size = n / 1024;
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return `${size < 10 ? size.toFixed(1) : Math.round(size)} ${units[unit]}`;
}

/** "just now", "5 min ago", "yesterday 14:02", or a date: for list entries. */
export function formatTime(value) {
  if (!value) return '';
  const time = new Date(value);
  if (Number.isNaN(time.getTime())) return '';
  const seconds = (Date.now() - time.getTime()) / 1000;
  if (seconds < 45) return 'just now';
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  const clock = time.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  if (seconds < 20 * 3600 && new Date().getDate() === time.getDate()) return `today ${clock}`;
  return `${time.toLocaleDateString()} ${clock}`;
}

export function shorten(text, max) {
  const flat = String(text || '').replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

export function randomHex(bytes) {
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, '0')).join('');
}

export function sleep(ms) {
  return new Promise((resolve) => { setTimeout(resolve, ms); });
}

/** Seconds of a proto Duration in canonical JSON ("7.5s"), or null. */
export function durationMs(value) {
  if (!value) return null;
  const seconds = parseFloat(String(value));
  return Number.isFinite(seconds) ? Math.round(seconds * 1000) : null;
}

const CODE_NAMES = {
  3: 'invalid_argument', 4: 'deadline_exceeded', 5: 'not_found', 7: 'permission_denied',
  8: 'resource_exhausted', 9: 'failed_precondition', 13: 'internal', 14: 'unavailable', 16: 'unauthenticated',
};

/**
 * An error in words, with what to do. `error` is an RpcError from a call, or a Failure from an
 * event (`{code: number, message, reason, retryDelay}`).
 */
export function describeError(error) {
  if (!error) return 'Something went wrong.';
  const code = error instanceof RpcError ? error.code : (CODE_NAMES[error.code] || String(error.code || ''));
  const reason = error.reason || '';
  const message = error.message || '';
  const retryMs = error instanceof RpcError ? error.retryDelayMs : durationMs(error.retryDelay);
  const retry = retryMs !== null && retryMs !== undefined ? ` Try again in ${Math.max(1, Math.ceil(retryMs / 1000))} s.` : '';
  if (reason === 'CONCURRENT_TURNS') return `Too many answers are running at once in this session: wait for one to finish.${retry}`;
  if (reason.startsWith('QUOTA_')) return `This session has reached a limit (${message}). Delete something first.`;
  if (reason === 'UPLOAD_TOO_LARGE') return `The file is too large for this server (${message}).`;
  if (reason === 'PARSE_BUDGET_EXCEEDED') return 'The file took too much work to read; try a smaller or simpler file.';
  if (reason === 'CIRCUIT_OPEN' || reason === 'UPSTREAM_TIMEOUT') return `The model or site is not answering right now.${retry || ' Try again in a little while.'}`;
  if (code === 'resource_exhausted') {
    return retry ? `Rate limited: try again in ${Math.max(1, Math.ceil(retryMs / 1000))} s.`
      : `Rate limited (${message || 'too many requests'}). Try again in a moment.`;
  }
  if (code === 'unauthenticated') return 'Your session has expired or was deleted: reload the page to start a new one.';
  if (code === 'unavailable') return `The server is unavailable right now.${retry || ' The page keeps retrying.'}`;
  if (code === 'deadline_exceeded') return 'The server took too long to answer; try again.';
  if (code === 'not_found') return `Not found: ${message || 'it may have been deleted'}.`;
  if (code === 'invalid_argument') return `That was not accepted: ${message}.`;
  if (code === 'permission_denied') return `Not allowed: ${message}.`;
  if (code === 'failed_precondition') return `Not possible now: ${message}.`;
  if (code === 'canceled') return 'Cancelled.';
  return message ? `Error: ${message}${retry}` : `Error (${code || 'unknown'}).${retry}`;
}

/** The retry delay (ms) an error or Failure carries, or null. */
export function retryDelayOf(error) {
  if (!error) return null;
  if (error instanceof RpcError) return error.retryDelayMs;
  return durationMs(error.retryDelay);
}
