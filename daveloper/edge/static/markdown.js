/**
 * A small Markdown renderer that builds DOM nodes: untrusted text only ever becomes text nodes
 * (`textContent`), never HTML, so nothing in an answer can run or load anything.
 *
 *   answer.replaceChildren(renderMarkdown(text, { citation: (n) => linkNode }));
 *
 * Blocks: paragraphs, ATX headings, fenced code (copy button, light highlighting), bullet and
 * numbered lists (nested by indentation), GFM tables, block quotes, rules. Inline: code spans,
 * strong, emphasis, strike-through, links and bare URLs (http, https and mailto only; any other
 * scheme stays text), images as links (never loaded), citation markers `[n]` through `citation`.
 * Raw HTML is shown as text. An unfinished construct while the answer streams (an open fence, a
 * half-typed `**`) renders as far as it goes and settles once the rest arrives.
 */

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:\s+(.*?))?\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:\s+(.*)|$)/;
const TABLE_RULE = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;
const SAFE_URL = /^(https?:\/\/|mailto:)/i;
const ESCAPABLE = /[!-/:-@[-`{-~]/;

/** Render `text` to a DocumentFragment. `options.citation(n)` returns a node for `[n]`, or null. */
export function renderMarkdown(text, options = {}) {
  const fragment = document.createDocumentFragment();
  renderBlocks(String(text).replace(/\r\n?/g, '\n').split('\n'), fragment, options);
  return fragment;
}

function renderBlocks(lines, parent, options) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    let m = FENCE.exec(line);
    if (m) {
      const closing = new RegExp(`^ {0,3}${m[1][0]}{${m[1].length},}\\s*$`);
      const body = [];
      i += 1;
      while (i < lines.length && !closing.test(lines[i])) body.push(lines[i++]);
      i += 1; // the closing fence (or the end of an answer still streaming)
      parent.append(codeBlock(body.join('\n'), m[2]));
      continue;
    }
    m = HEADING.exec(line);
    if (m) {
      const heading = el(`h${Math.min(m[1].length + 2, 6)}`, 'md-heading');
      renderInline(m[2] || '', heading, options);
      parent.append(heading);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      parent.append(el('hr'));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && lines[i].trim() && QUOTE.test(lines[i])) body.push(QUOTE.exec(lines[i++])[1]);
      const quote = el('blockquote');
      renderBlocks(body, quote, options);
      parent.append(quote);
      continue;
    }
    if (ITEM.test(line)) {
      i = renderList(lines, i, parent, options);
      continue;
    }
    if (line.includes('|') && i + 1 < lines.length && TABLE_RULE.test(lines[i + 1]) && lines[i + 1].includes('-')) {
      i = renderTable(lines, i, parent, options);
      continue;
    }
    const body = [line];
    i += 1;
    while (i < lines.length && lines[i].trim() && !startsBlock(lines, i)) body.push(lines[i++]);
    const paragraph = el('p');
    renderInline(body.join('\n'), paragraph, options);
    parent.append(paragraph);
  }
}

function startsBlock(lines, i) {
  const line = lines[i];
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line)
    || (line.includes('|') && i + 1 < lines.length && TABLE_RULE.test(lines[i + 1]) && lines[i + 1].includes('-'));
}

function renderList(lines, start, parent, options) {
  const first = ITEM.exec(lines[start]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const list = el(ordered ? 'ol' : 'ul');
  if (ordered && parseInt(first[2], 10) !== 1) list.start = parseInt(first[2], 10);
  let i = start;
  const items = [];
  while (i < lines.length) {
    const m = ITEM.exec(lines[i]);
    if (m && m[1].length === indent && /\d/.test(m[2]) === ordered) {
      const width = indent + m[2].length + 1;
      const body = [m[3] || ''];
      i += 1;
      let gap = false;
      while (i < lines.length) {
        const next = lines[i];
        if (!next.trim()) {
          gap = true;
          i += 1;
          continue;
        }
        const lead = next.length - next.trimStart().length;
        if (lead >= width || (lead > indent && ITEM.test(next))) {
          if (gap) body.push('');
          body.push(next.slice(Math.min(lead, width)));
          gap = false;
          i += 1;
        } else if (!gap && lead > indent && !startsBlock(lines, i)) {
          body.push(next.trim()); // a lazy continuation line
          i += 1;
        } else {
          break;
        }
      }
      items.push({ body, gap });
      if (gap && !(i < lines.length && ITEM.test(lines[i]) && ITEM.exec(lines[i])[1].length === indent)) break;
      continue;
    }
    break;
  }
  for (const { body } of items) {
    const item = el('li');
    const blockish = body.some((line, k) => k > 0 && (!line.trim() || startsBlock(body, k)));
    if (!blockish && !startsBlock(body, 0)) {
      renderInline(body.join('\n'), item, options);
    } else {
      // A tight item's first line stays inline; nested lists and code become blocks.
      const lead = [];
      let k = 0;
      while (k < body.length && body[k].trim() && (k === 0 || !startsBlock(body, k))) lead.push(body[k++]);
      if (lead.length && !startsBlock(lead, 0)) renderInline(lead.join('\n'), item, options);
      else k = 0;
      renderBlocks(body.slice(k), item, options);
    }
    list.append(item);
  }
  parent.append(list);
  return i;
}

function splitRow(line) {
  let row = line.trim();
  if (row.startsWith('|')) row = row.slice(1);
  if (row.endsWith('|') && !row.endsWith('\\|')) row = row.slice(0, -1);
  const cells = [];
  let cell = '';
  for (let k = 0; k < row.length; k += 1) {
    if (row[k] === '\\' && row[k + 1] === '|') {
      cell += '|';
      k += 1;
    } else if (row[k] === '|') {
      cells.push(cell.trim());
      cell = '';
    } else {
      cell += row[k];
    }
  }
  cells.push(cell.trim());
  return cells;
}

function renderTable(lines, start, parent, options) {
  const head = splitRow(lines[start]);
  const aligns = splitRow(lines[start + 1]).map((spec) => {
    if (spec.startsWith(':') && spec.endsWith(':')) return 'center';
    if (spec.endsWith(':')) return 'right';
    return spec.startsWith(':') ? 'left' : '';
  });
  const table = el('table');
  const row = (cells, tag) => {
    const tr = el('tr');
    head.forEach((_, n) => {
      const cell = el(tag);
      if (aligns[n]) cell.className = `align-${aligns[n]}`;
      renderInline(cells[n] || '', cell, options);
      tr.append(cell);
    });
    return tr;
  };
  const thead = el('thead');
  thead.append(row(head, 'th'));
  const tbody = el('tbody');
  let i = start + 2;
  while (i < lines.length && lines[i].trim() && lines[i].includes('|')) tbody.append(row(splitRow(lines[i++]), 'td'));
  table.append(thead, tbody);
  const wrap = el('div', 'md-table');
  wrap.append(table);
  parent.append(wrap);
  return i;
}

/* ---------- inline ---------- */

const INLINE_RULES = [
  // [kind, pattern anchored at the current position]
  ['code', /^(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/],
  ['strong', /^(\*\*|__)(?=\S)([\s\S]*?\S)\1/],
  ['em', /^\*(?=[^\s*])([\s\S]*?[^\s*])\*(?!\*)/],
  ['em', /^_(?=[^\s_])([\s\S]*?[^\s_])_(?![\w_])/],
  ['del', /^~~(?=\S)([\s\S]*?\S)~~/],
  ['citation', /^\[(\d{1,3})\]/],
  ['image', /^!\[([^\]\n]*)\]\(\s*<?([^\s)>]*)>?(?:\s+"[^"\n]*")?\s*\)/],
  ['link', /^\[((?:[^\]\n]|\n(?!\n))*)\]\(\s*<?([^\s)>]*)>?(?:\s+"[^"\n]*")?\s*\)/],
  ['autolink', /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i],
  ['url', /^https?:\/\/[^\s<>]*[^\s<>.,:;"')\]!?*_]/i],
];

function renderInline(text, parent, options) {
  let buffer = '';
  const flush = () => {
    if (buffer) parent.append(document.createTextNode(buffer));
    buffer = '';
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '\\' && i + 1 < text.length && ESCAPABLE.test(text[i + 1])) {
      buffer += text[i + 1];
      i += 2;
      continue;
    }
    if ('`*_~[!<h'.includes(c)) {
      const rest = text.slice(i);
      const wordStart = i === 0 || /[\s([{"'>]/.test(text[i - 1]);
      let done = false;
      for (const [kind, pattern] of INLINE_RULES) {
        if ((kind === 'url' && !wordStart) || (kind === 'em' && c === '_' && !wordStart)) continue;
        const m = pattern.exec(rest);
        if (!m) continue;
        const node = inlineNode(kind, m, options);
        if (!node) continue;
        flush();
        parent.append(node);
        i += m[0].length;
        done = true;
        break;
      }
      if (done) continue;
    }
    buffer += c;
    i += 1;
  }
  flush();
}

function inlineNode(kind, m, options) {
  switch (kind) {
    case 'code': return el('code', '', m[2].length > 2 && m[2].startsWith(' ') && m[2].endsWith(' ') ? m[2].slice(1, -1) : m[2]);
    case 'strong': return wrap('strong', m[2], options);
    case 'em': return wrap('em', m[1], options);
    case 'del': return wrap('del', m[1], options);
    case 'citation': return options.citation ? options.citation(Number(m[1])) : null;
    case 'image': return link(m[2], m[1] ? `image: ${m[1]}` : 'image', options, true);
    case 'link': return link(m[2], m[1], options, false);
    case 'autolink':
    case 'url': return link(m[1] || m[0], m[1] || m[0], null, true);
    default: return null;
  }
}

function wrap(tag, inner, options) {
  const node = el(tag);
  renderInline(inner, node, options);
  return node;
}

/** A link to an http(s) or mailto URL; any other target leaves the text as text. */
function link(url, label, options, plainLabel) {
  if (!SAFE_URL.test(url)) {
    const span = el('span', 'md-unsafe-link');
    if (plainLabel || !options) span.textContent = label;
    else renderInline(label, span, options);
    return span;
  }
  const a = el('a');
  a.href = url;
  a.rel = 'noopener noreferrer nofollow';
  a.target = '_blank';
  if (plainLabel || !options) a.textContent = label;
  else renderInline(label, a, { ...options, citation: null });
  return a;
}

/* ---------- code blocks ---------- */

function codeBlock(code, language) {
  const figure = el('figure', 'md-code');
  const bar = el('figcaption', 'md-code-bar');
  bar.append(el('span', 'md-code-lang', language || 'code'));
  const copy = el('button', 'md-copy', 'Copy');
  copy.type = 'button';
  copy.dataset.testid = 'copy-code';
  copy.setAttribute('aria-label', `Copy ${language || ''} code`.replace('  ', ' '));
  bar.append(copy);
  const pre = el('pre');
  const codeEl = el('code');
  if (language) codeEl.dataset.language = language.toLowerCase();
  highlight(code, language, codeEl);
  pre.append(codeEl);
  figure.append(bar, pre);
  return figure;
}

const KEYWORDS = new Set(`abstract and as async await break case catch class const continue def default defer del
do elif else enum except export extends false False final finally fn for from func function go if impl import in
interface is lambda let loop match mod mut new nil None not null or package pass private protected pub public raise
return self static struct super switch this throw true True try type typeof use var void while with yield
echo then fi esac done local`.split(/\s+/));
const HASH_COMMENTS = new Set(['python', 'py', 'sh', 'bash', 'shell', 'zsh', 'ruby', 'rb', 'yaml', 'yml', 'toml', 'ini', 'conf', 'dockerfile', 'make', 'makefile', 'perl', 'r']);
const TOKEN = /(\/\*[\s\S]*?(?:\*\/|$)|\/\/[^\n]*|#[^\n]*|"(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?|`(?:[^`\\]|\\.)*`?|\b\d[\d_.xXa-fA-FeE]*\b|\b[A-Za-z_][\w]*\b)/g;

/** Light highlighting (comments, strings, numbers, keywords) as spans of text nodes. */
function highlight(code, language, parent) {
  const lang = (language || '').toLowerCase();
  if (!lang || ['text', 'plain', 'txt', 'output', 'console'].includes(lang)) {
    parent.textContent = code;
    return;
  }
  const hashComments = HASH_COMMENTS.has(lang);
  const slashComments = !hashComments || lang === 'php';
  let last = 0;
  for (const m of code.matchAll(TOKEN)) {
    const token = m[0];
    let kind = '';
    if (token.startsWith('/*') || token.startsWith('//')) kind = slashComments ? 'c' : '';
    else if (token.startsWith('#')) kind = hashComments ? 'c' : '';
    else if (/^["'`]/.test(token)) kind = 's';
    else if (/^\d/.test(token)) kind = 'n';
    else if (KEYWORDS.has(token)) kind = 'k';
    if (!kind) continue; // a plain word, or comment syntax of another language: left as text
    if (m.index > last) parent.append(document.createTextNode(code.slice(last, m.index)));
    parent.append(el('span', `tok-${kind}`, token));
    last = m.index + token.length;
  }
  if (last < code.length) parent.append(document.createTextNode(code.slice(last)));
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
