/**
 * The Documents panel: the session's documents (ListDocuments), delete, a search box
 * (DocumentService/Search) and uploads of several files at once (picker or drag and drop),
 * each with its own progress bar driven by the Upload stream's progress events.
 */
import { $, el, testid, formatBytes, formatTime, shorten, describeError } from './ui.js';

const DOCUMENTS = '/daveloper.v1.DocumentService/';
const UPLOAD_CHUNK_BYTES = 64 * 1024;
const PARALLEL_UPLOADS = 2;
// Weight of each ingestion stage in a file's progress bar (start %, end %).
const STAGE_SPAN = {
  INGEST_STAGE_RECEIVING: [0, 40],
  INGEST_STAGE_PARSING: [40, 50],
  INGEST_STAGE_CHUNKING: [50, 60],
  INGEST_STAGE_EMBEDDING: [60, 90],
  INGEST_STAGE_STORING: [90, 100],
};
const MEDIA_NAMES = {
  'text/markdown': 'Markdown', 'text/plain': 'text', 'text/html': 'HTML', 'application/pdf': 'PDF',
  'application/vnd.openxmlformats-officedocument.wordprocessingml.document': 'DOCX',
};

export class Documents {
  constructor(page) {
    this.page = page;
    this.queue = [];
    this.active = 0;
    this.refreshing = null;
    $('upload-file').addEventListener('change', (event) => {
      this.add([...event.target.files]);
      event.target.value = '';
    });
    const zone = $('documents-panel');
    zone.addEventListener('dragover', (event) => {
      if (![...(event.dataTransfer?.types || [])].includes('Files')) return;
      event.preventDefault();
      zone.classList.add('dragging');
    });
    zone.addEventListener('dragleave', (event) => {
      if (!zone.contains(event.relatedTarget)) zone.classList.remove('dragging');
    });
    zone.addEventListener('drop', (event) => {
      event.preventDefault();
      zone.classList.remove('dragging');
      this.add([...(event.dataTransfer?.files || [])]);
    });
    $('search-form').addEventListener('submit', (event) => {
      event.preventDefault();
      this.search($('search-input').value.trim());
    });
    $('documents').addEventListener('click', (event) => {
      const button = event.target.closest('.document-delete');
      if (button) this.remove(button.closest('[data-document-id]'));
    });
  }

  setConnected(connected) {
    $('upload-file').disabled = !connected;
    $('search-button').disabled = !connected;
    if (connected) {
      this.refresh();
      this.pump();
    }
  }

  /** Reload the list; calls made while one runs share its result. */
  refresh() {
    if (!this.page.conn) return Promise.resolve();
    if (!this.refreshing) {
      this.refreshing = this.load().finally(() => { this.refreshing = null; });
    }
    return this.refreshing;
  }

  async load() {
    const found = [];
    let pageToken = '';
    try {
      do {
        // eslint-disable-next-line no-await-in-loop
        const reply = await this.page.conn.unary(`${DOCUMENTS}ListDocuments`, { pageSize: 100, pageToken });
        found.push(...(reply.documents || []));
        pageToken = reply.nextPageToken || '';
      } while (pageToken && found.length < 1000);
    } catch (error) {
      if (this.page.conn) this.status(`Could not list the documents: ${describeError(error)}`);
      return;
    }
    found.sort((a, b) => String(b.updateTime || b.createTime || '').localeCompare(String(a.updateTime || a.createTime || '')));
    const rows = found.map((doc) => this.row(doc));
    $('documents').replaceChildren(...rows);
    $('documents-empty').hidden = rows.length > 0;
    $('documents-count').textContent = rows.length ? `(${rows.length})` : '';
  }

  row(doc) {
    const item = testid(el('li', 'document'), 'document');
    item.dataset.documentId = doc.id;
    const name = doc.title || doc.name || doc.id;
    const head = el('div', 'document-head');
    const title = el('span', 'document-name', name);
    title.title = doc.sourceUri || doc.name || '';
    const remove = testid(el('button', 'icon-button document-delete', '×'), 'delete-document');
    remove.type = 'button';
    remove.title = 'Delete document';
    remove.setAttribute('aria-label', `Delete document “${shorten(name, 40)}”`);
    head.append(title, remove);
    const type = MEDIA_NAMES[doc.mediaType] || doc.language || (doc.mediaType || '').split('/').pop() || 'file';
    const facts = [doc.title && doc.name && doc.title !== doc.name ? doc.name : '', type, formatBytes(doc.sizeBytes), `${doc.chunkCount || 0} chunk${doc.chunkCount === 1 ? '' : 's'}`, `v${doc.version || 1}`,
      formatTime(doc.updateTime || doc.createTime)].filter(Boolean);
    const meta = testid(el('div', 'document-meta', facts.join(' · ')), 'document-meta');
    item.append(head, meta);
    if (doc.sourceUri && /^https?:\/\//i.test(doc.sourceUri)) {
      const link = el('a', 'document-source', shorten(doc.sourceUri, 70));
      link.href = doc.sourceUri;
      link.rel = 'noopener noreferrer nofollow';
      link.target = '_blank';
      item.append(link);
    }
    return item;
  }

  async remove(item) {
    if (!item || !this.page.conn) return;
    const name = item.querySelector('.document-name').textContent;
    // eslint-disable-next-line no-alert
    if (!window.confirm(`Delete the document “${shorten(name, 60)}” and everything searched from it?`)) return;
    try {
      await this.page.conn.unary(`${DOCUMENTS}DeleteDocument`, { documentId: item.dataset.documentId });
      this.status(`Deleted ${name}.`);
    } catch (error) {
      this.status(`Could not delete ${name}: ${describeError(error)}`);
    }
    await this.refresh();
    this.page.refreshUsage();
  }

  status(text) {
    $('documents-status').textContent = text;
  }

  /* ---------- search ---------- */

  async search(query) {
    const results = $('search-results');
    if (!query) {
      results.replaceChildren();
      return;
    }
    if (!this.page.conn) return;
    results.setAttribute('aria-busy', 'true');
    let reply;
    try {
      reply = await this.page.conn.unary(`${DOCUMENTS}Search`, { query, topK: 8 });
    } catch (error) {
      results.replaceChildren(el('li', 'empty', describeError(error)));
      return;
    } finally {
      results.setAttribute('aria-busy', 'false');
    }
    const hits = reply.hits || [];
    if (!hits.length) {
      results.replaceChildren(el('li', 'empty', `Nothing in your documents matches “${shorten(query, 60)}”.`));
      return;
    }
    results.replaceChildren(...hits.map((hit) => {
      const item = testid(el('li', 'search-hit'), 'search-hit');
      const details = el('details');
      const summary = el('summary');
      const location = hit.chunk?.location || {};
      const where = [location.headingPath?.join(' › '), location.page ? `page ${location.page}` : '',
        location.startLine ? `lines ${location.startLine}–${location.endLine || location.startLine}` : '']
        .filter(Boolean).join(' · ');
      summary.append(el('strong', '', hit.documentName || hit.chunk?.documentId || 'document'),
        where ? el('span', 'hit-where', ` — ${where}`) : '', el('span', 'hit-score', ` (score ${Number(hit.score || 0).toFixed(2)})`));
      const preview = el('p', 'hit-preview', shorten(hit.chunk?.text, 180));
      details.append(summary, el('blockquote', 'hit-text', hit.chunk?.text || ''));
      item.append(details, preview);
      return item;
    }));
  }

  /* ---------- uploads ---------- */

  add(files) {
    for (const file of files) {
      const row = testid(el('li', 'upload'), 'upload');
      row.dataset.state = 'queued';
      const name = el('span', 'upload-name', file.name);
      const bar = testid(el('progress', 'upload-progress'), 'upload-progress');
      bar.max = 100;
      bar.value = 0;
      bar.setAttribute('aria-label', `Progress of ${file.name}`);
      const status = testid(el('span', 'upload-status', 'waiting…'), 'upload-status');
      row.append(name, bar, status);
      $('uploads').append(row);
      this.queue.push({ file, row, bar, status });
    }
    this.pump();
  }

  pump() {
    while (this.page.conn && this.active < PARALLEL_UPLOADS && this.queue.length) {
      const job = this.queue.shift();
      this.active += 1;
      this.upload(job).finally(() => {
        this.active -= 1;
        this.pump();
      });
    }
  }

  async upload({ file, row, bar, status }) {
    const say = (text, kind) => {
      status.textContent = text;
      if (kind) row.dataset.state = kind;
    };
    say('uploading…', 'running');
    // What the events said so far: the ingestion's id and last seq let WatchIngestion take over
    // when the connection goes after the whole file was sent (the server goes on storing it).
    const ingestion = { id: '', lastSeq: 0, stored: null, failure: null };
    const apply = (event) => {
      const seq = Number(event.seq || 0);
      if (seq && seq <= ingestion.lastSeq) return;
      ingestion.lastSeq = seq || ingestion.lastSeq;
      ingestion.id = ingestion.id || event.ingestionId || '';
      if (event.progress) {
        const { stage, done = '0', total = '0' } = event.progress;
        const [from, to] = STAGE_SPAN[stage] || [0, 0];
        const fraction = Number(total) > 0 ? Number(done) / Number(total) : 1;
        bar.value = Math.max(bar.value, from + (to - from) * fraction);
        say(`${(stage || '').replace('INGEST_STAGE_', '').toLowerCase()} ${done}/${total}`);
      } else if (event.stored) {
        ingestion.stored = event.stored;
      } else if (event.failed) {
        ingestion.failure = event.failed;
      }
    };
    const call = this.page.conn.bidi(`${DOCUMENTS}Upload`);
    let sent = false;
    const reading = (async () => {
      for await (const response of call) {
        if (response.event) apply(response.event); // else a heartbeat
      }
    })();
    try {
      await call.send({ header: { fileName: file.name, mediaType: file.type || '', sizeBytes: String(file.size) } });
      for (let offset = 0; offset < file.size; offset += UPLOAD_CHUNK_BYTES) {
        // eslint-disable-next-line no-await-in-loop
        const bytes = new Uint8Array(await file.slice(offset, offset + UPLOAD_CHUNK_BYTES).arrayBuffer());
        // eslint-disable-next-line no-await-in-loop
        await call.send({ chunk: toBase64(bytes) });
      }
      call.end();
      sent = true;
      await reading;
    } catch (error) {
      call.cancel();
      await reading.catch(() => {});
      const lost = error.code === 'unavailable' && sent && ingestion.id && !ingestion.stored && !ingestion.failure;
      if (lost) {
        row.dataset.resumed = 'true';
        say('connection lost; following the upload again…');
        await this.followIngestion(ingestion, apply);
      }
      ingestion.failure = ingestion.failure || (ingestion.stored ? null : error);
    }
    const { stored, failure } = ingestion;
    if (stored) {
      bar.value = 100;
      const chunks = `${stored.chunkCount || 0} chunk${stored.chunkCount === 1 ? '' : 's'}`;
      say(`stored: ${chunks}${stored.version > 1 ? `, version ${stored.version}` : ''}`, 'stored');
    } else {
      say(`failed: ${describeError(failure || { message: 'the upload ended without a result' })}`, 'failed');
    }
    await this.refresh();
    this.page.refreshUsage();
  }

  /** Follow an ingestion with WatchIngestion from its last event, across reconnects (for up to a minute). */
  async followIngestion(ingestion, apply) {
    const until = Date.now() + 60000;
    while (!ingestion.stored && !ingestion.failure && Date.now() < until) {
      const conn = this.page.conn;
      if (!conn) {
        // eslint-disable-next-line no-await-in-loop
        await new Promise((resolve) => { setTimeout(resolve, 250); });
        continue;
      }
      const watch = conn.serverStream(`${DOCUMENTS}WatchIngestion`, {
        ingestionId: ingestion.id, afterSeq: String(ingestion.lastSeq),
      });
      try {
        // eslint-disable-next-line no-await-in-loop
        for await (const response of watch) {
          if (response.event) apply(response.event);
          if (ingestion.stored || ingestion.failure) break; // WatchIngestion tails until the end
        }
      } catch (error) {
        if (error.code !== 'unavailable') ingestion.failure = error;
      }
    }
  }
}

function toBase64(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}
