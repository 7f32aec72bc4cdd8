// Model output → safe DOM: marked (GitHub-flavoured Markdown) → DOMPurify → a DocumentFragment.
//
// Safety does not rest on one layer. Raw HTML in the model's text is rendered as visible text
// (escaped by our `html` renderer), so `<script>` or `<img onerror>` shows up as characters; then
// DOMPurify removes anything executable that Markdown itself can produce (javascript: links,
// event-handler attributes). Images are shown as links, so model output cannot make the browser
// fetch remote URLs by itself.
import { Marked } from 'marked';
import DOMPurify from 'dompurify';
import hljs from 'highlight.js/lib/core';
import bash from 'highlight.js/lib/languages/bash';
import c from 'highlight.js/lib/languages/c';
import cpp from 'highlight.js/lib/languages/cpp';
import css from 'highlight.js/lib/languages/css';
import diff from 'highlight.js/lib/languages/diff';
import go from 'highlight.js/lib/languages/go';
import java from 'highlight.js/lib/languages/java';
import javascript from 'highlight.js/lib/languages/javascript';
import json from 'highlight.js/lib/languages/json';
import markdown from 'highlight.js/lib/languages/markdown';
import python from 'highlight.js/lib/languages/python';
import rust from 'highlight.js/lib/languages/rust';
import shell from 'highlight.js/lib/languages/shell';
import sql from 'highlight.js/lib/languages/sql';
import typescript from 'highlight.js/lib/languages/typescript';
import xml from 'highlight.js/lib/languages/xml';
import yaml from 'highlight.js/lib/languages/yaml';

// A handful of common languages (each registers its usual aliases: py, js, sh, html, ...);
// all ~190 would triple the page's size.
for (const [name, lang] of Object.entries({
  bash, c, cpp, css, diff, go, java, javascript, json, markdown, python, rust, shell, sql, typescript, xml, yaml,
})) hljs.registerLanguage(name, lang);

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (ch) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[ch]));

// Math stays as its source text (no TeX renderer is bundled), but it must reach the reader
// unmangled: without these tokens Markdown would eat `\[` (an escape) and turn `a*b*c` into
// emphasis. Delimiters: $$…$$ and \[…\] (display), $…$ and \(…\) (inline). A `$` is only math when
// it hugs its content ("$x^2$"), so prices like "$5 and $10" stay text.
const mathBlock = {
  name: 'mathBlock',
  level: 'block',
  start: (src) => src.match(/^ {0,3}(\$\$|\\\[)/m)?.index,
  tokenizer(src) {
    const m = /^ {0,3}(?:\$\$([\s\S]+?)\$\$|\\\[([\s\S]+?)\\\]) *(?:\n|$)/.exec(src);
    if (m) return { type: 'mathBlock', raw: m[0], text: m[0].trim() };
    return undefined;
  },
  renderer: (token) => `<div class="math math-block">${escapeHtml(token.text)}</div>\n`,
};
const mathInline = {
  name: 'mathInline',
  level: 'inline',
  start: (src) => src.match(/\$|\\[([]/)?.index,
  tokenizer(src) {
    const m = /^(?:\$\$(?!\s)[^$]+?\$\$|\$(?![\s$])(?:\\.|[^\\$\n])+?(?<!\s)\$(?!\d)|\\\((?:.|\n)+?\\\)|\\\[(?:.|\n)+?\\\])/.exec(src);
    if (m) return { type: 'mathInline', raw: m[0], text: m[0] };
    return undefined;
  },
  renderer: (token) => `<span class="math">${escapeHtml(token.text)}</span>`,
};

const marked = new Marked({
  gfm: true,
  breaks: false,
  extensions: [mathBlock, mathInline],
  renderer: {
    // Raw HTML (block or inline) is shown as text, never parsed.
    html({ text, block }) {
      return block ? `<p class="raw-html">${escapeHtml(text.replace(/\n+$/, ''))}</p>\n` : escapeHtml(text);
    },
    // Fenced and indented code: highlighted when the language is one we bundle, with a header
    // holding the language and a Copy button (wired up by chat.js through event delegation).
    code({ text, lang }) {
      const language = (lang || '').trim().split(/\s+/)[0].toLowerCase();
      const known = language && hljs.getLanguage(language);
      const body = known ? hljs.highlight(text, { language, ignoreIllegals: true }).value : escapeHtml(text);
      return '<div class="code-block"><div class="code-head">' +
        `<span class="code-lang">${escapeHtml(language || 'text')}</span>` +
        '<button type="button" class="copy-code" aria-label="Copy code">Copy</button></div>' +
        `<pre><code class="hljs${known ? ' language-' + escapeHtml(language) : ''}">${body}</code></pre></div>\n`;
    },
    image({ href, text }) {
      return `<a href="${escapeHtml(href)}">${escapeHtml('[image: ' + (text || href) + ']')}</a>`;
    },
  },
});

// Every link opens in a new tab without handing it this page (window.opener) or the referrer.
DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    if (node.hasAttribute('href')) {
      node.setAttribute('target', '_blank');
      node.setAttribute('rel', 'noopener noreferrer');
    }
  }
});

const PURIFY = {
  USE_PROFILES: { html: true },
  // Nothing that submits, takes input or restyles the page; no inline styles.
  FORBID_TAGS: ['style', 'form', 'input', 'textarea', 'select', 'option'],
  FORBID_ATTR: ['style'],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
  RETURN_DOM_FRAGMENT: true,
};

/** Renders Markdown source into a sanitized DocumentFragment. */
export function renderMarkdown(source) {
  return DOMPurify.sanitize(marked.parse(source), PURIFY);
}
