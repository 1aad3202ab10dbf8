// Playwright scenarios for the chat page, on Debian's Chromium (playwright-core never downloads
// a browser). Run by tests/browser/test_page.py:
//
//   node page_scenarios.cjs <scenario> <edge url> [argument]
//
// Each scenario drives the page like a person, records what it saw, saves a screenshot to
// artifacts/<scenario>.png and prints one JSON object; the pytest side asserts on it.
const path = require('node:path');
const fs = require('node:fs');
const { chromium } = require('playwright-core');

const [scenario, baseUrl, argument = ''] = process.argv.slice(2);
const ARTIFACTS = path.join(__dirname, 'artifacts');
// Required on this machine: without the background-networking flags Chromium's connections are refused.
const LAUNCH = {
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
};
const TIMEOUT = 15000;

const GUIDE = `# Frobnicator guide

The frobnicator rotates the widget queue every 42 seconds.
When the frobnicator overheats, the frobnicator pauses the widget queue for ten minutes.
Operators restart the frobnicator with the frobnicate command and watch the frobnicator log.
The frobnicator keeps its widget queue in memory and writes a frobnicator snapshot every hour.
`;

/** The page, plus everything the console, the network and the sockets said while it ran. */
async function openPage(browser) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const seen = { consoleErrors: [], pageErrors: [], failedRequests: [], sockets: 0, sent: [], cspHeader: null };
  page.on('console', (msg) => { if (msg.type() === 'error') seen.consoleErrors.push(msg.text()); });
  page.on('pageerror', (error) => seen.pageErrors.push(String(error)));
  page.on('requestfailed', (request) => seen.failedRequests.push(`${request.url()} ${request.failure()?.errorText}`));
  page.on('response', (response) => {
    if (response.status() >= 400) seen.failedRequests.push(`${response.url()} ${response.status()}`);
  });
  page.on('websocket', (socket) => {
    seen.sockets += 1;
    socket.on('framesent', (frame) => {
      if (typeof frame.payload === 'string') seen.sent.push(JSON.parse(frame.payload));
    });
  });
  const response = await page.goto(baseUrl);
  seen.cspHeader = response.headers()['content-security-policy'] || null;
  await page.locator('#connection-status[data-state="connected"]').waitFor();
  return { context, page, seen };
}

async function upload(page, name, text) {
  // Record every value the new file's progress bar takes.
  await page.evaluate(() => {
    window.progressValues = [];
    new MutationObserver((records) => {
      for (const record of records) {
        if (record.target.matches?.('[data-testid="upload-progress"]')) window.progressValues.push(record.target.value);
      }
    }).observe(document.getElementById('uploads'), { attributes: true, attributeFilter: ['value'], subtree: true });
  });
  const uploads = await page.locator('[data-testid="upload"]').count();
  await page.locator('#upload-file').setInputFiles({ name, mimeType: 'text/markdown', buffer: Buffer.from(text) });
  const row = page.locator('[data-testid="upload"]').nth(uploads);
  await row.locator('[data-testid="upload-status"]', { hasText: 'stored' }).waitFor();
  await page.locator('#documents li', { hasText: name.replace(/\.md$/, '') }).first().waitFor().catch(() => {});
  return {
    progressValues: await page.evaluate(() => window.progressValues),
    progress: await row.locator('[data-testid="upload-progress"]').evaluate((bar) => ({ value: bar.value, max: bar.max })),
    documents: await page.locator('#documents li').allTextContents(),
  };
}

/** Counts the mutation batches of the newest answer: one per rendered chunk of streamed text. */
async function watchNextAnswer(page) {
  await page.evaluate(() => {
    window.answerSteps = [];
    const transcript = document.getElementById('transcript');
    new MutationObserver(() => {
      const answers = transcript.querySelectorAll('[data-testid="answer"]');
      const text = answers.length ? answers[answers.length - 1].textContent : '';
      if (text && text !== window.answerSteps[window.answerSteps.length - 1]) window.answerSteps.push(text);
    }).observe(transcript, { childList: true, subtree: true, characterData: true });
  });
}

async function ask(page, question) {
  await page.locator('#chat-input').fill(question);
  await page.locator('#send-button').click();
}

async function lastTurn(page) {
  const turn = page.locator('[data-testid="turn"]').last();
  return {
    state: await turn.getAttribute('data-state'),
    verified: await turn.getAttribute('data-verified'),
    answer: await turn.locator('[data-testid="answer"]').textContent(),
    status: await turn.locator('[data-testid="turn-status"]').textContent(),
    citations: await turn.locator('[data-testid="citation"]').allTextContents(),
    citationLinks: await turn.locator('[data-testid="citation"] a').evaluateAll((links) => links.map((a) => a.href)),
    toolCalls: await turn.locator('[data-testid="tool-call"]').allTextContents(),
    toolResults: await turn.locator('[data-testid="tool-result"]').allTextContents(),
    ariaLive: await turn.locator('[data-testid="answer"]').getAttribute('aria-live'),
    ariaBusy: await turn.locator('[data-testid="answer"]').getAttribute('aria-busy'),
  };
}

const finished = '[data-testid="turn"]:last-child:not([data-state="running"])';

const scenarios = {
  /** Session, upload with progress, a streamed answer with tool calls and a citation. */
  async chat(page, seen) {
    const session = await page.locator('#session-id').textContent();
    const token = await page.evaluate(() => localStorage.getItem('daveloper.token'));
    const uploaded = await upload(page, 'frobnicator.md', GUIDE);
    await watchNextAnswer(page);
    await ask(page, 'How often does the frobnicator rotate the widget queue?');
    await page.locator(finished).waitFor();
    const result = {
      session, token, uploaded, turn: await lastTurn(page),
      answerSteps: await page.evaluate(() => window.answerSteps),
      conversationId: await page.evaluate(() => window.daveloper.conversationId),
    };
    await page.screenshot({ path: path.join(ARTIFACTS, 'chat.png'), fullPage: true });
    // A reload keeps the session (the token is in localStorage) ...
    const sockets = seen.sockets;
    await page.reload();
    await page.locator('#connection-status[data-state="connected"]').waitFor();
    result.sessionAfterReload = await page.locator('#session-id').textContent();
    result.socketsForReload = seen.sockets - sockets;
    // ... and a token the server refuses is replaced by a new session's.
    await page.evaluate(() => localStorage.setItem('daveloper.token', 'not-a-valid-token'));
    await page.reload();
    await page.locator('#connection-status[data-state="connected"]').waitFor();
    result.sessionAfterRefusal = await page.locator('#session-id').textContent();
    result.tokenAfterRefusal = await page.evaluate(() => localStorage.getItem('daveloper.token'));
    return result;
  },

  /** Stop a turn that is still running: its tool is waiting on a page that answers very late. */
  async stop(page, seen) {
    await ask(page, `Please read ${argument}`);
    await page.locator('[data-testid="turn"]:last-child [data-testid="tool-call"]').waitFor();
    const runningBeforeStop = await page.locator('[data-testid="turn"]').last().getAttribute('data-state');
    const stopEnabled = await page.locator('#stop-button').isEnabled();
    const pressed = Date.now();
    await page.locator('#stop-button').click();
    await page.locator(finished).waitFor();
    return {
      runningBeforeStop, stopEnabled, stoppedAfterMs: Date.now() - pressed,
      turn: await lastTurn(page),
      stopDisabledAfter: await page.locator('#stop-button').isDisabled(),
      cancelFrames: seen.sent.filter((frame) => frame.type === 'msg' && frame.message && frame.message.cancel),
      token: await page.evaluate(() => window.daveloper.token),
      conversationId: await page.evaluate(() => window.daveloper.conversationId),
    };
  },

  /** Drop the socket right after the first piece of the answer; the page must finish the answer. */
  async resume(page, seen) {
    await upload(page, 'frobnicator.md', GUIDE);
    const socketsBefore = seen.sockets;
    await page.evaluate(() => {
      window.dropped = null;
      window.statuses = [];
      const status = document.getElementById('connection-status');
      new MutationObserver(() => window.statuses.push(status.dataset.state))
        .observe(status, { attributes: true, attributeFilter: ['data-state'] });
      const transcript = document.getElementById('transcript');
      const observer = new MutationObserver(() => {
        const answers = transcript.querySelectorAll('[data-testid="answer"]');
        const text = answers.length ? answers[answers.length - 1].textContent : '';
        if (text) {
          observer.disconnect();
          // Runs before the next WebSocket message is handled: everything after this is lost.
          window.dropped = { text, lastSeq: window.daveloper.lastSeq };
          window.daveloper.dropConnection();
        }
      });
      observer.observe(transcript, { childList: true, subtree: true, characterData: true });
    });
    await ask(page, 'What does the frobnicator do with the widget queue?');
    await page.locator(finished).waitFor();
    return {
      dropped: await page.evaluate(() => window.dropped),
      statuses: await page.evaluate(() => window.statuses),
      socketsOpened: seen.sockets - socketsBefore,
      watchFrames: seen.sent.filter((frame) => frame.type === 'open' && frame.method === '/daveloper.v1.AgentService/Watch'),
      turn: await lastTurn(page),
      token: await page.evaluate(() => window.daveloper.token),
      conversationId: await page.evaluate(() => window.daveloper.conversationId),
    };
  },

  /** The gRPC server running the turn goes away mid-answer (the socket stays): the page resumes on another. */
  async failover(page, seen) {
    const socketsBefore = seen.sockets;
    await ask(page, 'Tell me about the widget queue.');
    await page.locator(finished).waitFor({ timeout: 30000 });
    return {
      turn: await lastTurn(page),
      socketsOpened: seen.sockets - socketsBefore,
      watchFrames: seen.sent.filter((frame) => frame.type === 'open' && frame.method === '/daveloper.v1.AgentService/Watch'),
      token: await page.evaluate(() => window.daveloper.token),
      conversationId: await page.evaluate(() => window.daveloper.conversationId),
    };
  },

  /** client.js on its own, imported by the page: the reference client's API and errors. */
  async client(page) {
    return page.evaluate(async () => {
      const client = await import('/client.js');
      const url = `ws://${location.host}/ws`;
      const out = {};
      const conn = await client.connect(url, { token: window.daveloper.token, pingIntervalMs: 0 });
      out.session = conn.session;
      out.limits = conn.limits;
      out.pingMs = await conn.ping();
      const failure = async (promise) => {
        try {
          await promise;
          return null;
        } catch (e) {
          return { name: e.name, isRpcError: e instanceof client.RpcError, code: e.code, message: e.message,
            reason: e.reason, detailTypes: (e.details || []).map((d) => d.type), closeCode: e.closeCode };
        }
      };
      out.notFound = await failure(conn.unary('/daveloper.v1.AgentService/GetConversation', { conversationId: 'nope' }));
      out.unknownMethod = await failure(conn.unary('/daveloper.v1.Nope/Nope', {}));
      out.refusedToken = await failure(client.connect(url, { token: 'not-a-token' }));
      // A bidi chat opened with credit 1: the answer still arrives whole, one granted message at a time.
      const chat = conn.bidi('/daveloper.v1.AgentService/Chat', { credit: 1 });
      await chat.send({ send: { conversationId: 'conv_client_test', text: 'anything?' } });
      let text = '';
      const kinds = [];
      for await (const { event } of chat) {
        kinds.push(Object.keys(event).find((k) => !['seq', 'conversationId', 'turnId', 'createTime'].includes(k)));
        if (event.tokenDelta) text += event.tokenDelta.text;
        if (event.turnCompleted) {
          out.completedText = event.turnCompleted.text;
          chat.end();
        }
      }
      out.chat = { text, kinds, status: await chat.status };
      out.emptyText = await failure((async () => {
        const bad = conn.bidi('/daveloper.v1.AgentService/Chat');
        await bad.send({ send: { text: ' ' } });
        for await (const _ of bad) { /* nothing arrives */ }
      })());
      // Watch tails forever: cancel ends it with `canceled`.
      const watch = conn.serverStream('/daveloper.v1.AgentService/Watch', { conversationId: 'conv_client_test' });
      const seen = [];
      out.cancelled = await failure((async () => {
        for await (const { event } of watch) {
          seen.push(event.seq);
          if (event.turnCompleted) watch.cancel();
        }
      })());
      out.watchSeqs = seen;
      let closed = null;
      conn.onclose = (info) => { closed = info; };
      const open = conn.serverStream('/daveloper.v1.AgentService/Watch', { conversationId: 'conv_client_test' });
      conn.close();
      out.closeInfo = closed;
      out.afterClose = await failure((async () => { for await (const _ of open) { /* ended by close */ } })());
      return out;
    });
  },

  /** Scrape a small local site and watch the log fill up. */
  async scrape(page, seen) {
    await page.locator('#job-target').fill(argument);
    await page.locator('#job-depth').fill('1');
    await page.locator('#job-max-pages').fill('5');
    await page.locator('#job-ingest').check();
    await page.locator('#job-button').click();
    await page.locator('[data-testid="job-log"] [data-kind="finished"]').waitFor();
    await page.locator('#documents li').nth(2).waitFor();
    return {
      log: await page.locator('[data-testid="job-log"] li').evaluateAll((items) => items.map((li) => ({ kind: li.dataset.kind, text: li.textContent }))),
      documents: await page.locator('#documents li').allTextContents(),
      scrapeButtonEnabled: await page.locator('#job-button').isEnabled(),
      jobState: await page.locator('[data-testid="job-state"]').first().textContent(),
      jobCounts: await page.locator('[data-testid="job-counts"]').first().textContent(),
      jobBar: await page.locator('[data-testid="job"] progress').first().evaluate((bar) => ({ value: bar.value, max: bar.max })),
    };
  },
};

(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const browser = await chromium.launch(LAUNCH);
  let page;
  try {
    const opened = await openPage(browser);
    page = opened.page;
    const result = await scenarios[scenario](page, opened.seen);
    const shot = path.join(ARTIFACTS, scenario === 'chat' ? 'chat-new-session.png' : `${scenario}.png`);
    await page.screenshot({ path: shot, fullPage: true });
    const { seen } = opened;
    process.stdout.write(`${JSON.stringify({
      ...result,
      consoleErrors: seen.consoleErrors, pageErrors: seen.pageErrors, failedRequests: seen.failedRequests,
      cspHeader: seen.cspHeader, screenshot: shot, screenshotBytes: fs.statSync(shot).size,
    })}\n`);
  } catch (error) {
    if (page) await page.screenshot({ path: path.join(ARTIFACTS, `${scenario}-failed.png`), fullPage: true }).catch(() => {});
    process.stderr.write(`${error.stack || error}\n`);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
