// Every flow of the chat page in one Chromium (playwright-core on Debian's Chromium), one after
// another against one server. Run by tests/browser/test_page_flows.py:
//
//   node page_flows.cjs <edge url> <local site url> [screenshot dir]
//
// It drives the page like a person, records what it saw and prints one JSON object; the pytest
// side asserts on it. With a screenshot dir, each flow is also saved in light, dark and 375 px
// wide (docs/screenshots, scripts/screenshots); without, one screenshot per flow goes to artifacts/.
const path = require('node:path');
const fs = require('node:fs');
const { chromium } = require('playwright-core');

const [baseUrl, siteUrl, shotsDir = ''] = process.argv.slice(2);
const ARTIFACTS = path.join(__dirname, 'artifacts');
const LAUNCH = {
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
};
const TIMEOUT = 15000;
const WIDE = { width: 1280, height: 860 };
const NARROW = { width: 375, height: 812 };

const GUIDE = `# Frobnicator guide

The frobnicator rotates the widget queue every 42 seconds.
When the frobnicator overheats, the frobnicator pauses the widget queue for ten minutes.
Operators restart the frobnicator with the frobnicate command and watch the frobnicator log.
`;
const OPS = `# Widget operations

## Cooling

The frobnicator overheats in warm rooms, so keep the widget queue somewhere cool.
Restarting the frobnicator clears the widget queue pause at once.
`;
const XSS = [
  "<script>window.__xss = 'script'</script>",
  "<img src=x onerror=\"window.__xss='img'\">",
  "<svg onload=\"window.__xss='svg'\"></svg>",
  "[click me](javascript:window.__xss='link')",
  "<a href=\"javascript:alert(1)\">anchor</a>",
];
const XSS_DOCUMENT = `# <img src=x onerror="window.__xss='heading'"> frobnicator notes\n\n${
  XSS.map((line) => `The frobnicator quotes ${line} in its log.`).join('\n\n')}\n`;
const XSS_FILE_NAME = '<img src=x onerror=alert(1)>.md';

const result = {
  requests: [], consoleErrors: [], pageErrors: [], alerts: [], conversations: {}, cspHeader: null,
};

async function newPage(browser, { route } = {}) {
  const context = await browser.newContext({ viewport: WIDE });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: baseUrl });
  if (route) await route(context);
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('console', (msg) => { if (msg.type() === 'error') result.consoleErrors.push(msg.text()); });
  page.on('pageerror', (error) => result.pageErrors.push(String(error)));
  page.on('request', (request) => result.requests.push(request.url()));
  page.on('websocket', (socket) => result.requests.push(socket.url()));
  page.on('dialog', (dialog) => {
    if (dialog.type() !== 'confirm') result.alerts.push(`${dialog.type()}: ${dialog.message()}`);
    dialog.accept().catch(() => {});
  });
  const response = await page.goto(baseUrl);
  result.cspHeader = result.cspHeader || response.headers()['content-security-policy'] || null;
  await connected(page);
  return { context, page };
}

const connected = (page) => page.locator('#connection-status[data-state="connected"]').waitFor();
const lastTurn = (page) => page.locator('[data-testid="turn"]').last();
const finished = '[data-testid="turn"]:last-child:not([data-state="running"])';

async function ask(page, question) {
  await page.locator('#chat-input').fill(question);
  await page.locator('#send-button').click();
}

async function turnInfo(page) {
  const turn = lastTurn(page);
  return {
    state: await turn.getAttribute('data-state'),
    verified: await turn.getAttribute('data-verified'),
    text: await turn.locator('[data-testid="answer"]').textContent(),
    status: await turn.locator('[data-testid="turn-status"]').textContent(),
  };
}

async function answerStarted(page) {
  await page.waitForFunction(() => {
    const answers = document.querySelectorAll('[data-testid="answer"]');
    return answers.length && answers[answers.length - 1].textContent.length > 0;
  });
}

async function where(page) {
  return page.evaluate(() => ({ token: window.daveloper.token, id: window.daveloper.conversationId }));
}

/** Light, dark and narrow screenshots into the screenshot dir; else one into artifacts/. */
async function shoot(page, name, focus) {
  if (!shotsDir) {
    await page.screenshot({ path: path.join(ARTIFACTS, `flow-${name}.png`) });
    return;
  }
  const variants = [['light', WIDE, 'light'], ['dark', WIDE, 'dark'], ['narrow', NARROW, 'light']];
  for (const [variant, size, scheme] of variants) {
    await page.emulateMedia({ colorScheme: scheme });
    await page.setViewportSize(size);
    if (focus) await focus().catch(() => {});
    await page.screenshot({ path: path.join(shotsDir, `${name}-${variant}.png`) });
  }
  await page.emulateMedia({ colorScheme: 'light' });
  await page.setViewportSize(WIDE);
}

/** What in the page could run or load something: elements, handlers and links that must never appear. */
async function dangerous(page) {
  return page.evaluate(() => {
    const found = [];
    for (const node of document.body.querySelectorAll('*')) {
      if (['SCRIPT', 'IMG', 'SVG', 'IFRAME', 'OBJECT', 'EMBED', 'svg', 'STYLE', 'LINK'].includes(node.tagName)) found.push(node.tagName);
      for (const attr of node.attributes) {
        if (/^on/i.test(attr.name)) found.push(`${node.tagName}[${attr.name}]`);
        if (['href', 'src', 'action', 'formaction'].includes(attr.name) && /^\s*(javascript|data|vbscript):/i.test(attr.value)) {
          found.push(`${node.tagName}[${attr.name}=${attr.value}]`);
        }
      }
    }
    return found;
  });
}

/** Markdown the renderer must turn into text or safe links, never into markup or script. */
const HOSTILE_MARKDOWN = [
  '<script>window.__xss = 1</script>', '<img src=x onerror="window.__xss=2">', '<svg><script>window.__xss=3</script></svg>',
  '[a](javascript:window.__xss=4)', '[b](JAVASCRIPT:window.__xss=5)', '[c]( javascript:window.__xss=6)',
  '[d](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)', '[e](vbscript:msgbox)', '[f](&#106;avascript:alert(1))',
  '![g](javascript:window.__xss=7)', '![h](https://203.0.113.9/pixel.png)', '<javascript:window.__xss=8>',
  '[i](https://ok.example/"onmouseover="window.__xss=9)', 'https://ok.example/<script>window.__xss=10</script>',
  '<a href="javascript:window.__xss=11">j</a>', '**<img src=x onerror="window.__xss=12">**', '`<b onclick=x>`',
  '| <img src=x onerror=1> | b |\n|---|---|\n| [k](javascript:1) | <iframe> |',
  '> <object data=x></object>\n> - <embed src=x>', '```\n<script>window.__xss=13</script>\n```',
  '<style>body{display:none}</style>', '<link rel=stylesheet href=https://203.0.113.9/x.css>',
];

const flows = {
  /** The renderer on its own: hostile Markdown stays text; structure comes out right, also half-streamed. */
  async renderer(page) {
    return page.evaluate(async (hostile) => {
      const { renderMarkdown } = await import('/markdown.js');
      const box = document.createElement('div');
      const render = (text) => {
        box.replaceChildren(renderMarkdown(text, {}));
        return box;
      };
      const dangerous = [];
      const hrefs = [];
      for (const text of hostile) {
        render(text);
        for (const node of box.querySelectorAll('*')) {
          if (!['P', 'A', 'SPAN', 'STRONG', 'EM', 'CODE', 'PRE', 'FIGURE', 'FIGCAPTION', 'BUTTON', 'UL', 'OL', 'LI',
            'BLOCKQUOTE', 'DIV', 'TABLE', 'THEAD', 'TBODY', 'TR', 'TH', 'TD'].includes(node.tagName)) dangerous.push(node.tagName);
          for (const attr of node.attributes) {
            if (!['class', 'href', 'rel', 'target', 'type', 'aria-label', 'data-testid', 'data-language'].includes(attr.name)) dangerous.push(`${node.tagName}[${attr.name}]`);
          }
          if (node.tagName === 'A') hrefs.push(node.getAttribute('href'));
        }
      }
      const shape = (text) => {
        render(text);
        return box.innerHTML.replace(/ (class|rel|target|type|aria-label|data-testid)="[^"]*"/g, '');
      };
      return {
        dangerous, hrefs, xss: window.__xss ?? null,
        nested: shape('- a\n  - b\n    1. c\n- d'),
        ordered: shape('3. three\n4. four'),
        table: shape('| x | y |\n|:-|:-:|\n| a\\|b | `c|d` |'),
        openFence: shape('```js\nconst a = 1;'),
        openBold: shape('so **bol'),
        heading: shape('# Title\ntext under it'),
        quote: shape('> quoted\n> - item'),
        softBreak: shape('one\ntwo'),
      };
    }, HOSTILE_MARKDOWN);
  },

  /** Several files at once and one dropped, each with its progress; the list; search; delete; usage. */
  async documents(page) {
    await page.evaluate(() => {
      window.progress = [];
      new MutationObserver((records) => {
        for (const record of records) {
          const bar = record.target;
          if (!bar.matches?.('[data-testid="upload-progress"]')) continue;
          const index = [...document.getElementById('uploads').children].indexOf(bar.closest('li'));
          (window.progress[index] = window.progress[index] || []).push(bar.value);
        }
      }).observe(document.getElementById('uploads'), { attributes: true, attributeFilter: ['value'], subtree: true });
    });
    await page.locator('#upload-file').setInputFiles([
      { name: 'frobnicator.md', mimeType: 'text/markdown', buffer: Buffer.from(GUIDE) },
      { name: 'widget-ops.md', mimeType: 'text/markdown', buffer: Buffer.from(OPS) },
      { name: XSS_FILE_NAME, mimeType: 'text/markdown', buffer: Buffer.from(XSS_DOCUMENT) },
    ]);
    await page.evaluate(() => {
      const files = new DataTransfer();
      files.items.add(new File(['Dropped notes: the frobnicator prefers cold rooms.\n'], 'dropped.txt', { type: 'text/plain' }));
      const zone = document.getElementById('documents-panel');
      zone.dispatchEvent(new DragEvent('dragover', { dataTransfer: files, bubbles: true, cancelable: true }));
      zone.dispatchEvent(new DragEvent('drop', { dataTransfer: files, bubbles: true, cancelable: true }));
    });
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="upload"]').length === 4
      && [...document.querySelectorAll('[data-testid="upload"]')].every((row) => ['stored', 'failed'].includes(row.dataset.state)));
    await page.waitForFunction(() => document.querySelectorAll('#documents li').length === 4);
    await shoot(page, 'documents');
    const flow = {
      uploadStates: await page.locator('[data-testid="upload"]').evaluateAll((rows) => rows.map((row) => row.dataset.state)),
      progressValues: await page.evaluate(() => window.progress),
      documentNames: await page.locator('.document-name').allTextContents(),
      guideMeta: await page.locator('#documents li', { hasText: 'Frobnicator guide' }).locator('[data-testid="document-meta"]').textContent(),
    };
    await page.locator('#search-input').fill('frobnicator overheats');
    await page.locator('#search-button').click();
    await page.locator('[data-testid="search-hit"]').first().waitFor();
    flow.searchHits = await page.locator('[data-testid="search-hit"] summary').allTextContents();
    await page.locator('[data-testid="search-hit"] summary').first().click();
    flow.searchPassage = await page.locator('.hit-text').first().textContent();
    flow.beforeDelete = await page.locator('#documents li').count();
    await page.locator('#documents li', { hasText: 'dropped' }).locator('[data-testid="delete-document"]').click();
    await page.waitForFunction((n) => document.querySelectorAll('#documents li').length === n, flow.beforeDelete - 1);
    flow.afterDelete = await page.locator('#documents li').count();
    flow.namesAfterDelete = await page.locator('.document-name').allTextContents();
    await page.locator('#usage-summary').click();
    await page.locator('[data-testid="usage"] tr[data-quota="documents"]', { hasText: '3 of 500' }).waitFor();
    flow.usage = await page.locator('[data-testid="usage"]').textContent();
    await shoot(page, 'search-and-usage', () => page.evaluate(() => window.scrollTo(0, 0)));
    await page.locator('#usage-summary').click();
    // The socket drops once the whole file is sent and the server is processing it: the page
    // follows the ingestion with WatchIngestion to its end instead of calling it failed.
    await page.evaluate(() => {
      const uploads = document.getElementById('uploads');
      const before = uploads.children.length;
      const observer = new MutationObserver(() => {
        const row = uploads.children[before];
        const status = row?.querySelector('[data-testid="upload-status"]')?.textContent || '';
        if (/^(parsing|chunking|embedding|storing)/.test(status)) {
          observer.disconnect();
          window.droppedAt = status;
          window.daveloper.dropConnection();
        }
      });
      observer.observe(uploads, { childList: true, subtree: true, characterData: true });
    });
    const big = Array.from({ length: 400 }, (_, i) => `## Section ${i}\n\nThe widget queue note number ${i} says the frobnicator is fine.\n`).join('\n');
    await page.locator('#upload-file').setInputFiles({ name: 'big-notes.md', mimeType: 'text/markdown', buffer: Buffer.from(big) });
    const bigRow = page.locator('[data-testid="upload"]').last();
    await page.waitForFunction(() => ['stored', 'failed'].includes(document.querySelector('#uploads li:last-child')?.dataset.state));
    flow.resumedUpload = {
      droppedAt: await page.evaluate(() => window.droppedAt),
      state: await bigRow.getAttribute('data-state'),
      resumed: await bigRow.getAttribute('data-resumed'),
      status: await bigRow.locator('[data-testid="upload-status"]').textContent(),
    };
    await connected(page);
    await page.locator('#documents li', { hasText: 'big-notes' }).locator('[data-testid="delete-document"]').click();
    await page.waitForFunction(() => !/big-notes/.test(document.getElementById('documents').textContent));
    return flow;
  },

  /** A Markdown answer after a real search: rendered while it streams, with sources and a tool call. */
  async answer(page) {
    await page.evaluate(() => {
      window.renders = 0;
      window.codeWhileStreaming = false;
      let last = '';
      new MutationObserver(() => {
        const turns = document.querySelectorAll('[data-testid="turn"]');
        const turn = turns[turns.length - 1];
        const answer = turn?.querySelector('[data-testid="answer"]');
        if (!answer || answer.innerHTML === last) return;
        last = answer.innerHTML;
        window.renders += 1;
        if (turn.dataset.state === 'running' && answer.querySelector('figure.md-code')) window.codeWhileStreaming = true;
      }).observe(document.getElementById('transcript'), { childList: true, subtree: true, characterData: true });
    });
    await ask(page, 'Show the frobnicator sources in detail');
    await page.locator(finished).waitFor();
    const info = await turnInfo(page);
    const turn = lastTurn(page);
    const answer = turn.locator('[data-testid="answer"]');
    const shape = await answer.evaluate((node) => ({
      headings: node.querySelectorAll('.md-heading').length,
      strong: node.querySelectorAll('strong').length,
      em: node.querySelectorAll('em').length,
      listItems: node.querySelectorAll('li').length,
      nestedLists: node.querySelectorAll('li ol, li ul').length,
      tableHeaders: [...node.querySelectorAll('th')].map((th) => th.textContent),
      tableCells: node.querySelectorAll('td').length,
      rightAligned: node.querySelectorAll('.align-right').length,
      codeLanguage: node.querySelector('code[data-language]')?.dataset.language,
      code: node.querySelector('figure code')?.textContent,
      keywordTokens: node.querySelectorAll('figure .tok-k').length,
      commentTokens: node.querySelectorAll('figure .tok-c').length,
      links: [...node.querySelectorAll('a:not(.cite)')].map((a) => a.href.replace(/\/$/, '')),
    }));
    await turn.locator('[data-testid="copy-code"]').click();
    await turn.locator('[data-testid="copy-code"]', { hasText: 'Copied' }).waitFor();
    const copied = await page.evaluate(() => navigator.clipboard.readText());
    const markers = await turn.locator('a.cite').allTextContents();
    await turn.locator('a.cite').first().click();
    const source = turn.locator('[data-testid="citation"]').first();
    const firstSource = {
      open: await source.locator('details').evaluate((d) => d.open),
      focused: await source.locator('summary').evaluate((s) => document.activeElement === s),
      summary: await source.locator('summary').textContent(),
      passage: await source.locator('[data-testid="citation-passage"]').textContent(),
      origin: await source.locator('.citation-origin').textContent(),
    };
    const tool = turn.locator('[data-testid="tool-call"]').first();
    const toolFlow = { openBefore: await tool.locator('details').evaluate((d) => d.open) };
    await tool.locator('summary').click();
    toolFlow.openAfter = await tool.locator('details').evaluate((d) => d.open);
    toolFlow.summary = await tool.locator('summary').textContent();
    toolFlow.arguments = await tool.locator('.tool-args').textContent();
    toolFlow.result = await tool.locator('[data-testid="tool-result"]').textContent();
    result.conversations.answer = await where(page);
    await shoot(page, 'answer', () => turn.locator('.sources').scrollIntoViewIfNeeded());
    return {
      ...info, shape, copied, markers, firstSource, tool: toolFlow,
      streamedRenders: await page.evaluate(() => window.renders),
      codeWhileStreaming: await page.evaluate(() => window.codeWhileStreaming),
    };
  },

  /** An answer full of markup, and documents named and filled with it: all shown as text. */
  async xss(page) {
    await ask(page, 'Show me the markup corpus');
    await page.locator(finished).waitFor();
    await page.locator('#search-input').fill('frobnicator quotes log');
    await page.locator('#search-button').click();
    await page.locator('[data-testid="search-hit"]').first().waitFor();
    await page.locator('[data-testid="search-hit"] summary').first().click();
    return {
      ...(await turnInfo(page)),
      answerText: await lastTurn(page).locator('[data-testid="answer"]').textContent(),
      xssFlag: await page.evaluate(() => window.__xss ?? null),
      dialogs: result.alerts.slice(),
      dangerous: await dangerous(page),
      documentNames: await page.locator('.document-name').allTextContents(),
      documentMetas: await page.locator('[data-testid="document-meta"]').allTextContents(),
      unsafeLinks: await lastTurn(page).locator('.md-unsafe-link').count(),
    };
  },

  /** Sidebar, new conversation, URL per conversation, back and forward, reload, delete. */
  async conversations(page) {
    const flow = { first: await page.evaluate(() => window.daveloper.conversationId), urlAfterFirst: page.url() };
    await page.locator('#new-conversation').click();
    await ask(page, 'hello there');
    await page.locator(finished).waitFor();
    flow.second = await page.evaluate(() => window.daveloper.conversationId);
    flow.urlAfterSecond = page.url();
    await page.waitForFunction((id) => document.querySelector('[data-testid="conversation"]')?.dataset.conversationId === id, flow.second);
    flow.sidebarAfterSecond = await page.locator('[data-testid="conversation"]').evaluateAll((items) => items.map((i) => i.dataset.conversationId));
    flow.titles = await page.locator('.conversation-title').allTextContents();
    await shoot(page, 'conversations', () => page.evaluate(() => {
      if (document.body.dataset.nav !== 'open') document.getElementById('nav-toggle').click();
    }));
    const shown = async (id, turns) => {
      await page.waitForFunction(([want, count]) => window.daveloper.conversationId === want
        && document.querySelectorAll('[data-testid="turn"]:not([data-state="running"])').length >= count, [id, turns]);
      return {
        url: page.url(),
        title: await page.title(),
        turns: await page.locator('[data-testid="turn"]').count(),
        userTexts: await page.locator('[data-testid="user-text"]').allTextContents(),
        hasTable: await page.locator('#transcript table').count() > 0,
        sources: await page.locator('[data-testid="turn"]').first().locator('[data-testid="citation"]').count(),
      };
    };
    await page.goBack();
    flow.back = await shown(flow.first, 2);
    await page.goForward();
    flow.forward = await shown(flow.second, 1);
    await page.reload();
    await connected(page);
    flow.afterReload = await shown(flow.second, 1);
    flow.activeAfterReload = await page.locator('[aria-current="page"]').evaluate((a) => a.closest('li').dataset.conversationId);
    result.conversations.deleted = await where(page);
    await page.locator(`[data-conversation-id="${flow.second}"] [data-testid="delete-conversation"]`).click();
    await page.waitForFunction((id) => !document.querySelector(`[data-conversation-id="${id}"]`), flow.second);
    flow.sidebarAfterDelete = await page.locator('[data-testid="conversation"]').evaluateAll((items) => items.map((i) => i.dataset.conversationId));
    flow.urlAfterDelete = page.url();
    return flow;
  },

  /** Reload in the middle of an answer: the page reopens the conversation and follows the turn to its end. */
  async reload(page) {
    await page.locator('#new-conversation').click();
    await ask(page, 'A slow answer, please');
    await page.waitForFunction(() => /Part 1 /.test(document.querySelector('[data-testid="turn"]:last-child [data-testid="answer"]')?.textContent || ''));
    const beforeReload = await lastTurn(page).locator('[data-testid="answer"]').textContent();
    await page.reload();
    await connected(page);
    await lastTurn(page).waitFor();
    const stateAfterReload = await lastTurn(page).getAttribute('data-state');
    await page.locator(finished).waitFor();
    result.conversations.reload = await where(page);
    const toolCalls = await lastTurn(page).locator('[data-testid="tool-call"]').count();
    return { beforeReload, stateAfterReload, toolCalls, ...(await turnInfo(page)) };
  },

  /** Keys, Send/Stop while a turn runs, Esc stops, and a dropped socket mid-answer. */
  async states(page) {
    await page.locator('#new-conversation').click();
    const input = page.locator('#chat-input');
    await input.click();
    await page.keyboard.type('slow: line one');
    const turnsBeforeEnter = await page.locator('[data-testid="turn"]').count();
    await page.keyboard.press('Shift+Enter');
    await page.keyboard.type('line two');
    const flow = {
      draft: await input.inputValue(), turnsBeforeEnter,
      turnsAfterShiftEnter: await page.locator('[data-testid="turn"]').count(),
    };
    await page.keyboard.press('Enter');
    await answerStarted(page);
    flow.userText = await lastTurn(page).locator('[data-testid="user-text"]').textContent();
    flow.sendDisabledWhileRunning = await page.locator('#send-button').isDisabled();
    flow.stopEnabledWhileRunning = await page.locator('#stop-button').isEnabled();
    await shoot(page, 'streaming');
    await page.keyboard.press('Escape');
    await page.locator(finished).waitFor();
    flow.stopped = await turnInfo(page);
    flow.sendEnabledAfter = await page.locator('#send-button').isEnabled();
    await page.evaluate(() => {
      window.statuses = [];
      const status = document.getElementById('connection-status');
      new MutationObserver(() => window.statuses.push(status.dataset.state))
        .observe(status, { attributes: true, attributeFilter: ['data-state'] });
    });
    await ask(page, 'slow again, with a drop');
    await answerStarted(page);
    await page.evaluate(() => window.daveloper.dropConnection());
    await page.locator(finished).waitFor();
    flow.dropped = await turnInfo(page);
    flow.statuses = await page.evaluate(() => window.statuses);
    result.conversations.states = await where(page);
    return flow;
  },

  /** A socket that goes silent mid-answer: "stalled", the page drops it, reconnects (with a countdown) and finishes. */
  async stall(browser) {
    let mode = 'pass';
    let current = 0;
    const muted = new Set(); // sockets that deliver nothing more
    const quietStreams = new Map(); // socket → highest stream id whose messages are no longer delivered
    const opened = new Map(); // socket → highest stream id the page opened
    const { context, page } = await newPage(browser, {
      route: (context) => context.routeWebSocket(/\/ws$/, (ws) => {
        result.requests.push(ws.url());
        if (mode === 'refuse') {
          ws.close({ code: 1013, reason: 'try again later' });
          return;
        }
        current += 1;
        const id = current;
        const server = ws.connectToServer();
        ws.onMessage((message) => {
          const frame = JSON.parse(message);
          if (frame.type === 'open') opened.set(id, frame.id);
          server.send(message);
        });
        server.onMessage((message) => {
          if (muted.has(id)) return;
          const frame = JSON.parse(message);
          if (frame.type === 'msg' && frame.id <= (quietStreams.get(id) ?? 0)) return;
          ws.send(message);
        });
      }),
    });
    try {
      const flow = { heartbeatMs: await page.evaluate(() => window.daveloper.heartbeatMs) };
      // 1. The turn's stream goes quiet but the socket answers pings: the page keeps the socket
      // and follows the turn on a new stream (Watch).
      await page.evaluate(() => {
        // The stall may last only as long as a ping: record it rather than poll for it.
        window.stalled = [];
        new MutationObserver((records) => records.forEach((record) => {
          if (record.target.dataset.stalled === 'true' || record.oldValue === 'true') {
            window.stalled.push(record.target.querySelector('[data-testid="turn-status"]').textContent);
          }
        })).observe(document.getElementById('transcript'),
          { attributes: true, attributeFilter: ['data-stalled'], attributeOldValue: true, subtree: true });
      });
      await ask(page, 'A slow answer on a quiet stream, please');
      await answerStarted(page);
      const socketsBefore = current;
      quietStreams.set(current, opened.get(current));
      await page.waitForFunction(() => window.stalled.length > 0);
      await page.locator(finished).waitFor();
      flow.quiet = {
        ...(await turnInfo(page)), socketsOpened: current - socketsBefore,
        stalled: await page.evaluate(() => window.stalled),
      };
      result.conversations.quiet = await where(page);
      // 2. The socket goes silent (no events, no heartbeats, no pongs): the page drops it and
      // reconnects; the first reconnect is refused, so it counts down to the next.
      await page.locator('#new-conversation').click();
      await ask(page, 'A very slow answer, please');
      await answerStarted(page);
      muted.add(current); // nothing more reaches the page on this socket: no events, no heartbeats, no pongs
      await page.locator('[data-testid="turn"][data-stalled="true"]').waitFor();
      flow.stalledStatus = await lastTurn(page).locator('[data-testid="turn-status"]').textContent();
      mode = 'refuse'; // before the page drops the silent socket (a pong that never comes)
      await shoot(page, 'stalled');
      await page.locator('#connection-status', { hasText: /retrying in \d+ s/ }).waitFor();
      flow.countdown = await page.locator('#connection-status').textContent();
      mode = 'pass';
      await page.locator(finished).waitFor({ timeout: 30000 });
      Object.assign(flow, await turnInfo(page));
      result.conversations.stall = await where(page);
      return flow;
    } finally {
      await context.close();
    }
  },

  /** A session out of chat turns: the refusal in words with a countdown, the draft kept. */
  async rateLimit(browser) {
    const { context, page } = await newPage(browser);
    try {
      await page.evaluate(async () => {
        const client = await import('/client.js');
        const conn = await client.connect(`ws://${location.host}/ws`, { token: window.daveloper.token, pingIntervalMs: 0 });
        try {
          for (let i = 0; i < 40; i += 1) {
            const chat = conn.bidi('/daveloper.v1.AgentService/Chat');
            await chat.send({ send: { conversationId: 'conv_burst', text: `quick ${i}` } });
            chat.end();
            for await (const _ of chat) { /* until the turn ends */ }
          }
        } catch {
          // the bucket is empty
        } finally {
          conn.close();
        }
      });
      await ask(page, 'one more question');
      await page.locator('#chat-error', { hasText: 'Rate limited' }).waitFor();
      const error = await page.locator('#chat-error').textContent();
      const first = /try again in (\d+) s/i.exec(error)?.[1];
      await page.waitForFunction((n) => {
        const m = /try again in (\d+) s/i.exec(document.getElementById('chat-error').textContent);
        return m && m[1] !== n;
      }, first);
      const later = /try again in (\d+) s/i.exec(await page.locator('#chat-error').textContent())?.[1];
      const flow = {
        error, seconds: [first, later],
        sendDisabled: await page.locator('#send-button').isDisabled(),
        draftKept: await page.locator('#chat-input').inputValue(),
        turnState: await lastTurn(page).getAttribute('data-state'),
      };
      await shoot(page, 'rate-limited');
      return flow;
    } finally {
      await context.close();
    }
  },

  /** A crawl followed live, the page reloaded while it runs (WatchJob resumes), and a cancelled one. */
  async jobs(page) {
    await page.locator('#job-target').fill('ftp://files.example/pub');
    await page.locator('#job-button').click();
    await page.locator('#job-status:not(:empty)').waitFor();
    const refused = await page.locator('#job-status').textContent();
    await page.locator('#job-target').fill(`${siteUrl}/slowdocs/`);
    await page.locator('#job-depth').fill('1');
    await page.locator('#job-max-pages').fill('5');
    await page.locator('#job-button').click();
    const card = page.locator('[data-testid="job"]').first();
    await card.locator('[data-kind="page-fetched"]').first().waitFor({ state: 'attached' });
    const crawlId = await card.getAttribute('data-job-id');
    const flow = { refused, crawlId, stateBeforeReload: await card.locator('[data-testid="job-state"]').textContent() };
    await shoot(page, 'jobs', () => card.scrollIntoViewIfNeeded());
    await page.reload();
    await connected(page);
    const again = page.locator(`[data-job-id="${crawlId}"]`);
    await again.waitFor();
    flow.stateAfterReload = await again.locator('[data-testid="job-state"]').textContent();
    await fetch(`${siteUrl}/release`); // the slow pages may answer now (a request from this script, not the page)
    await again.locator('[data-kind="finished"]').waitFor({ state: 'attached' });
    flow.finished = await again.locator('[data-kind="finished"]').textContent();
    flow.log = await again.locator('[data-testid="job-log"] li').allTextContents();
    flow.counts = await again.locator('[data-testid="job-counts"]').textContent();
    await page.locator('#new-conversation').click();
    await ask(page, 'Show sources about slow page arrive');
    await page.locator(finished).waitFor();
    await lastTurn(page).locator('a.cite').first().click();
    const cited = lastTurn(page).locator('[data-testid="citation"]').first();
    flow.citedUrl = await cited.locator('.citation-origin a').getAttribute('href');
    flow.citedSummary = await cited.locator('summary').textContent();
    await page.locator('#job-target').fill('octo-org/hello-world');
    await page.locator('#job-button').click();
    await page.waitForFunction((id) => document.querySelector('[data-testid="job"]')?.dataset.jobId !== id, crawlId);
    const github = page.locator('[data-testid="job"]').first();
    await github.locator('[data-kind="finished"]').waitFor({ state: 'attached' });
    flow.github = {
      id: await github.getAttribute('data-job-id'),
      kind: await github.locator('.job-kind').textContent(),
      target: await github.locator('.job-target').textContent(),
      finished: await github.locator('[data-kind="finished"]').textContent(),
      log: await github.locator('[data-testid="job-log"] li').allTextContents(),
    };
    await page.locator('#job-target').fill(`${siteUrl}/stuck`);
    await page.locator('#job-depth').fill('0');
    await page.locator('#job-button').click();
    const stuck = page.locator('[data-testid="job"]').first();
    await page.waitForFunction((id) => document.querySelector('[data-testid="job"]')?.dataset.jobId !== id, flow.github.id);
    flow.cancelId = await stuck.getAttribute('data-job-id');
    await stuck.locator('[data-testid="job-cancel"]').click();
    await stuck.locator('[data-testid="job-state"]', { hasText: 'cancelled' }).waitFor();
    flow.cancelled = await stuck.locator('[data-testid="job-state"]').textContent();
    return flow;
  },
};

(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  if (shotsDir) fs.mkdirSync(shotsDir, { recursive: true });
  const browser = await chromium.launch(LAUNCH);
  let page;
  let running = '';
  try {
    ({ page } = await newPage(browser));
    result.token = await page.evaluate(() => window.daveloper.token);
    for (const name of ['renderer', 'documents', 'answer', 'xss', 'conversations', 'reload', 'states', 'jobs']) {
      running = name;
      const started = Date.now();
      result[name === 'conversations' ? 'conversationsFlow' : name] = await flows[name](page);
      result.timings = { ...result.timings, [name]: Date.now() - started };
    }
    for (const name of ['stall', 'rateLimit']) {
      running = name;
      const started = Date.now();
      result[name] = await flows[name](browser);
      result.timings = { ...result.timings, [name]: Date.now() - started };
    }
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } catch (error) {
    if (page) await page.screenshot({ path: path.join(ARTIFACTS, `flow-${running}-failed.png`), fullPage: true }).catch(() => {});
    process.stderr.write(`flow ${running} failed: ${error.stack || error}\n${JSON.stringify(result).slice(0, 4000)}\n`);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
