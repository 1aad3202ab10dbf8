/**
 * The Jobs panel: start a crawl (a URL) or a GitHub ingestion (`owner/repo`), and follow every
 * job of the session with WatchJob: live counts and progress, the page-by-page log (fetched,
 * skipped with its reason, failed with its reason), cancel. Jobs still running when the page
 * opens (ListJobs) are followed again from their first event; finished jobs load their log
 * when it is opened.
 */
import { $, el, testid, formatTime, shorten, describeError } from './ui.js';

const SCRAPER = '/daveloper.v1.ScraperService/';
// owner/repo, or a github.com URL of one (an owner has no dots, so example.org/docs is a site).
const REPOSITORY = /^(?:https?:\/\/github\.com\/)?([\w-]+\/[\w.-]+?)(?:\.git)?\/?$/i;
const FINISHED = new Set(['JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED']);

export class Jobs {
  constructor(page, onIngested) {
    this.page = page;
    this.onIngested = onIngested;
    this.jobs = new Map(); // job id → {job, view, lastSeq, follow, done, loaded}
    $('job-form').addEventListener('submit', (event) => {
      event.preventDefault();
      this.start();
    });
    $('jobs').addEventListener('click', (event) => {
      const button = event.target.closest('.job-cancel');
      if (button) this.cancel(button.closest('[data-job-id]').dataset.jobId);
    });
    $('jobs').addEventListener('toggle', (event) => {
      const item = event.target.closest('[data-job-id]');
      if (item && event.target.open) this.follow(this.jobs.get(item.dataset.jobId));
    }, true);
  }

  setConnected(connected) {
    $('job-button').disabled = !connected;
    for (const entry of this.jobs.values()) entry.following = null;
    if (connected) this.refresh();
  }

  async refresh() {
    if (!this.page.conn) return;
    let reply;
    try {
      reply = await this.page.conn.unary(`${SCRAPER}ListJobs`, { pageSize: 20 });
    } catch (error) {
      if (this.page.conn) $('job-status').textContent = `Could not list the jobs: ${describeError(error)}`;
      return;
    }
    const listed = (reply.jobs || []).slice().sort((a, b) => String(b.createTime).localeCompare(String(a.createTime)));
    for (const job of listed.reverse()) this.show(job);
    for (const entry of this.jobs.values()) {
      if (!entry.done || entry.view.log.closest('details').open) this.follow(entry);
    }
  }

  /** Add or update a job's card (newest first). */
  show(job) {
    let entry = this.jobs.get(job.id);
    if (!entry) {
      entry = { job, view: this.card(job), lastSeq: 0, following: null, done: false };
      this.jobs.set(job.id, entry);
      $('jobs').prepend(entry.view.root);
      $('jobs-empty').hidden = true;
    }
    entry.job = { ...entry.job, ...job };
    entry.done = FINISHED.has(entry.job.state);
    this.paint(entry);
    return entry;
  }

  card(job) {
    const root = testid(el('li', 'job'), 'job');
    root.dataset.jobId = job.id;
    const head = el('div', 'job-head');
    const target = job.github ? job.github.repository : (job.scrape?.urls || [])[0] || job.id;
    const title = el('span', 'job-title');
    title.append(el('span', 'job-kind', job.kind === 'JOB_KIND_GITHUB_INGEST' ? 'GitHub' : 'Crawl'), ' ',
      el('span', 'job-target', shorten(target, 60)));
    const badge = testid(el('span', 'job-state'), 'job-state');
    const cancel = testid(el('button', 'job-cancel', 'Cancel'), 'job-cancel');
    cancel.type = 'button';
    cancel.setAttribute('aria-label', `Cancel the job on ${shorten(target, 40)}`);
    head.append(title, badge, cancel);
    const bar = el('progress', 'job-progress');
    bar.setAttribute('aria-label', `Progress of the job on ${shorten(target, 40)}`);
    const counts = testid(el('p', 'job-counts'), 'job-counts');
    counts.setAttribute('aria-live', 'polite');
    const details = el('details', 'job-log-details');
    const summary = el('summary', '', 'Page log');
    const log = testid(el('ol', 'log'), 'job-log');
    log.setAttribute('role', 'log');
    details.append(summary, log);
    const failure = el('p', 'job-failure');
    failure.hidden = true;
    root.append(head, bar, counts, failure, details);
    return { root, badge, cancel, bar, counts, log, failure, time: title };
  }

  paint(entry) {
    const { job, view } = entry;
    const state = (job.state || 'JOB_STATE_QUEUED').replace('JOB_STATE_', '').toLowerCase();
    view.root.dataset.state = state;
    view.badge.textContent = state;
    view.cancel.hidden = entry.done;
    const stats = job.stats || {};
    const done = (stats.pagesFetched || 0) + (stats.pagesSkipped || 0) + (stats.pagesFailed || 0);
    const planned = Math.max(done + (stats.pagesQueued || 0), job.scrape?.maxPages || job.github?.maxFiles || 0, done, 1);
    view.bar.max = planned;
    if (entry.done) view.bar.value = planned;
    else if (done) view.bar.value = done;
    else view.bar.removeAttribute('value'); // indeterminate until the first page
    view.counts.textContent = statsText(stats) + (job.updateTime ? ` · ${formatTime(job.updateTime)}` : '');
    if (job.failure?.message) {
      view.failure.hidden = false;
      view.failure.textContent = describeError(job.failure);
    }
  }

  async start() {
    const conn = this.page.conn;
    const target = $('job-target').value.trim();
    if (!conn || !target) return;
    const ingest = $('job-ingest').checked;
    const maxPages = Number($('job-max-pages').value) || 0;
    const repository = !/^https?:\/\/(?!github\.com\/)/i.test(target) && REPOSITORY.exec(target);
    $('job-button').disabled = true;
    $('job-status').textContent = '';
    try {
      const reply = repository
        ? await conn.unary(`${SCRAPER}StartGitHubIngest`, {
          spec: { repository: repository[1], includeReadme: true, includeDocs: true, maxFiles: maxPages, ingest },
        })
        : await conn.unary(`${SCRAPER}StartScrape`, {
          spec: {
            urls: [/^[a-z][\w+.-]*:\/\//i.test(target) ? target : `https://${target}`], // a bare host gets https
            maxDepth: Number($('job-depth').value) || 0, maxPages, sameSiteOnly: true, ingest,
          },
        });
      const entry = this.show(reply.job);
      entry.view.log.closest('details').open = true;
      $('job-target').value = '';
      this.follow(entry);
    } catch (error) {
      $('job-status').textContent = describeError(error);
    } finally {
      $('job-button').disabled = !this.page.conn;
    }
  }

  /** Follow a job's events from the last one shown (replays its log, then tails it live). */
  async follow(entry) {
    const conn = this.page.conn;
    if (!entry || !conn || entry.following === conn || (entry.done && entry.loaded)) return;
    entry.following = conn;
    const call = conn.serverStream(`${SCRAPER}WatchJob`, { jobId: entry.job.id, afterSeq: String(entry.lastSeq) });
    try {
      for await (const response of call) {
        if (response.event) this.handle(entry, response.event);
        if (entry.loaded && entry.done) break; // WatchJob tails forever
      }
    } catch (error) {
      if (!this.page.conn || this.page.conn !== conn) return; // followed again after reconnecting
      if (error.code !== 'canceled') this.logLine(entry, 'error', `log unavailable: ${describeError(error)}`);
    } finally {
      if (entry.following === conn) entry.following = null;
    }
  }

  handle(entry, event) {
    const seq = Number(event.seq || 0);
    if (seq <= entry.lastSeq) return;
    entry.lastSeq = seq;
    const { job } = entry;
    if (event.queued) {
      this.logLine(entry, 'queued', 'queued');
    } else if (event.pageFetched) {
      const page = event.pageFetched;
      this.logLine(entry, 'page-fetched', `fetched ${page.httpStatus || ''} ${page.url}${page.title ? ` — ${page.title}` : ''}`
        + ` (${page.sizeBytes || 0} bytes, depth ${page.depth || 0})`);
      if (!FINISHED.has(job.state)) job.state = 'JOB_STATE_RUNNING';
    } else if (event.pageSkipped) {
      this.logLine(entry, 'page-skipped', `skipped ${event.pageSkipped.url}: ${event.pageSkipped.reason}`);
    } else if (event.pageFailed) {
      const failure = event.pageFailed.failure || {};
      this.logLine(entry, 'page-failed', `failed ${event.pageFailed.url}: ${failure.message || failure.reason || ''}`);
    } else if (event.log) {
      this.logLine(entry, 'log', `[${(event.log.level || 'info').toLowerCase()}] ${event.log.message}`);
    } else if (event.progress) {
      job.stats = event.progress.stats || job.stats;
      if (!FINISHED.has(job.state)) job.state = 'JOB_STATE_RUNNING';
    } else if (event.finished) {
      const { finished } = event;
      job.state = finished.state;
      job.stats = finished.stats || job.stats;
      if (finished.failure) job.failure = finished.failure;
      const outcome = (finished.state || '').replace('JOB_STATE_', '').toLowerCase();
      this.logLine(entry, 'finished', `finished: ${outcome}, ${statsText(finished.stats)}`
        + `${finished.failure ? ` — ${describeError(finished.failure)}` : ''}`);
      const wasRunning = !entry.done;
      entry.done = true;
      entry.loaded = true;
      if (wasRunning || (finished.stats?.documentsIngested && !entry.reported)) {
        entry.reported = true;
        this.onIngested();
        this.page.refreshUsage();
      }
    }
    this.paint(entry);
  }

  logLine(entry, kind, text) {
    const { log } = entry.view;
    const item = el('li', '', text);
    item.dataset.kind = kind;
    const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.append(item);
    if (atEnd) log.scrollTop = log.scrollHeight;
  }

  async cancel(jobId) {
    if (!this.page.conn) return;
    try {
      await this.page.conn.unary(`${SCRAPER}CancelJob`, { jobId });
    } catch (error) {
      $('job-status').textContent = `Could not cancel: ${describeError(error)}`;
    }
  }
}

function statsText(stats = {}) {
  return `${stats.pagesFetched || 0} fetched, ${stats.pagesSkipped || 0} skipped, `
    + `${stats.pagesFailed || 0} failed, ${stats.documentsIngested || 0} ingested`;
}
