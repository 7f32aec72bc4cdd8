// A tiny stand-in for `starling serve`, for developing the chat page and its browser test
// without the real server. Node's http module only.
//
//   node tests/browser/mock_server.mjs [--port] PORT [--page CHAT.html]   (PORT 0 picks a free one; the port is printed)
//   MOCK_API_KEY=secret node tests/browser/mock_server.mjs PORT   (requires Authorization: Bearer secret)
//
// Serves the bundled chat page at / (--page, else bundled now by src/server/web/build.mjs into a
// temporary file) with the real server's CSP, GET /health, GET /v1/models and a fake streaming
// POST /v1/chat/completions: about 20 chunks 50 ms apart (a Markdown sample for the message
// "/markdown"), each SSE event deliberately split across two writes (inside the JSON, and inside
// a multi-byte UTF-8 character) so the page's incremental parser is exercised. A client abort
// stops the stream.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import os from 'node:os';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const flag = (name) => { const i = args.indexOf(name); return i >= 0 ? args.splice(i, 2)[1] : undefined; };
let pagePath = flag('--page');
const port = Number(flag('--port') ?? args[0] ?? 0);   // PORT or --port PORT
let tmpDir = null;   // removed on exit
if (!pagePath) {
  // The page the real server embeds is the output of build.mjs; make the same here.
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'starling-mock-'));
  pagePath = path.join(tmpDir, 'chat.html');
  execFileSync(process.execPath, [path.resolve(here, '../../src/server/web/build.mjs'), pagePath], { stdio: 'inherit' });
}
const apiKey = process.env.MOCK_API_KEY || '';
const MODEL = 'stories260K (mock)';

function sendJson(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}
const sendError = (res, status, message, type) => sendJson(res, status, { error: { message, type } });

function readBody(req) {
  return new Promise((resolve, reject) => {
    const parts = [];
    req.on('data', (c) => parts.push(c));
    req.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
    req.on('error', reject);
  });
}

const WORDS = ('Once upon a time, there was a little bird named Tweety. ' +
  'She loved to sing in the big green tree — every morning ☀️ she sang a happy song. ' +
  'One day, a kind girl came by and smiled. "What a pretty song!" she said. The end.').split(/(?<= )/);

const MARKDOWN = [
  '# Streaming Markdown', '', 'A list:', '', '- one', '- two', '',
  '```python', 'def add(a, b):', '    return a + b', '', 'print(add(1, 2))', '```', '',
  '| x | x² |', '|---|----|', '| 1 | 1 |', '| 2 | 4 |', '| 3 | 9 |', '', 'Math: $x^2$. The end.',
].join('\n');

function streamCompletion(req, res, body) {
  const created = Math.floor(Date.now() / 1000);
  const id = 'chatcmpl-mock-' + created;
  const maxTokens = Number.isInteger(body.max_tokens) && body.max_tokens > 0 ? body.max_tokens : 256;
  const lastUser = [...body.messages].reverse().find((m) => m.role === 'user');
  const intro = `(${body.messages.length} messages, last: ${JSON.stringify(String(lastUser?.content ?? '').slice(0, 40))}) `;
  // The user message "/markdown" gets MARKDOWN instead of the story, streamed line by line, so
  // the page renders unfinished Markdown (an open code fence, half a table) on the way.
  const pieces = lastUser?.content === '/markdown' ? MARKDOWN.split(/(?<=\n)/) : [intro, ...WORDS];
  const n = Math.min(pieces.length, maxTokens);
  const finish = n < pieces.length ? 'length' : 'stop';

  res.writeHead(200, {
    'Content-Type': 'text/event-stream; charset=utf-8',
    'Cache-Control': 'no-cache',
    'Connection': 'keep-alive',
    'X-Accel-Buffering': 'no',
  });
  res.flushHeaders();
  const chunk = (delta, finishReason = null) => ({
    id, object: 'chat.completion.chunk', created, model: MODEL,
    choices: [{ index: 0, delta, finish_reason: finishReason }],
  });
  const events = [chunk({ role: 'assistant', content: '' })];
  for (let i = 0; i < n; i++) events.push(chunk({ content: pieces[i] }));
  events.push(chunk({}, finish));

  let i = 0;
  let timer = null;
  let closed = false;
  res.on('close', () => { closed = true; clearTimeout(timer); if (i <= events.length) console.log(`mock: client went away after ${i} events`); });
  const writeSplit = (text, then) => {
    const buf = Buffer.from(text, 'utf8');
    // Split inside the event: inside the first multi-byte UTF-8 character if there is one
    // ("—", "☀️"), else inside the JSON.
    const multi = buf.findIndex((b) => b >= 0x80);
    const cut = multi >= 0 ? multi + 1 : Math.max(1, Math.floor(buf.length * 0.6));
    res.write(buf.subarray(0, cut));
    timer = setTimeout(() => { if (!closed) { res.write(buf.subarray(cut)); then(); } }, 5);
  };
  const step = () => {
    if (closed) return;
    if (i === events.length) { i++; res.end('data: [DONE]\n\n'); return; }
    const ev = 'data: ' + JSON.stringify(events[i++]) + '\n\n';
    writeSplit(ev, () => { timer = setTimeout(step, 50); });
  };
  step();
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  try {
    if (req.method === 'GET' && (url.pathname === '/' || url.pathname === '/index.html')) {
      // The real server's Content-Security-Policy, with a fresh nonce put into each <script> and
      // <style> the same way (SendChatPage, src/server/server.cpp), so the mock catches what it blocks.
      const nonce = crypto.randomBytes(16).toString('base64');
      const html = fs.readFileSync(pagePath, 'utf8')
        .replaceAll('<script>', `<script nonce="${nonce}">`).replaceAll('<style>', `<style nonce="${nonce}">`);
      res.writeHead(200, {
        'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-cache',
        'Content-Security-Policy': `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'nonce-${nonce}'; ` +
          "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
      });
      res.end(html);
      return;
    }
    if (req.method === 'GET' && url.pathname === '/health') return sendJson(res, 200, { status: 'ok' });
    if (url.pathname.startsWith('/v1/') && apiKey && req.headers.authorization !== `Bearer ${apiKey}`) {
      return sendError(res, 401, 'Invalid or missing API key.', 'authentication_error');
    }
    if (req.method === 'GET' && url.pathname === '/v1/models') {
      return sendJson(res, 200, { object: 'list', data: [{ id: MODEL, object: 'model', owned_by: 'starling' }] });
    }
    if (url.pathname === '/v1/chat/completions') {
      if (req.method !== 'POST') return sendError(res, 405, 'Use POST.', 'invalid_request_error');
      let body;
      try { body = JSON.parse(await readBody(req)); } catch {
        return sendError(res, 400, 'The request body is not valid JSON.', 'invalid_request_error');
      }
      if (!Array.isArray(body.messages) || body.messages.length === 0) {
        return sendError(res, 400, '"messages" must be a non-empty array.', 'invalid_request_error');
      }
      if (body.stream !== true) return sendError(res, 400, 'The mock only streams.', 'invalid_request_error');
      return streamCompletion(req, res, body);
    }
    sendError(res, 404, `No route for ${req.method} ${url.pathname}.`, 'not_found_error');
  } catch (e) {
    sendError(res, 500, String(e?.message ?? e), 'server_error');
  }
});

server.listen(port, '127.0.0.1', () => {
  console.log(`mock: listening on http://127.0.0.1:${server.address().port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close();
    server.closeAllConnections();
    if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
    process.exit(0);
  });
}
