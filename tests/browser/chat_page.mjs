// Headless-browser test of the chat page served by `starling serve` at GET /.
//
//   node tests/browser/chat_page.mjs http://127.0.0.1:PORT [SCREENSHOT.png]
//
// Uses playwright-core with Debian's Chromium ($CHROMIUM, else /usr/bin/chromium). Checks: the
// title and an empty conversation; the model name from /v1/models in the header; a reply that
// streams in (>= 2 distinct non-empty lengths observed before it completes) with Send disabled
// meanwhile; the whole conversation (system + history) sent each turn; Stop keeping the partial
// reply; New chat clearing it; the server still answering after an aborted request; Enter /
// Shift+Enter; a server error shown readably; model text escaped. Exit 0 on success, 1 on failure.
import { chromium } from 'playwright-core';

const baseUrl = (process.argv[2] || '').replace(/\/+$/, '');
const shotPath = process.argv[3] || '/tmp/starling-chat.png';
const TOTAL_TIMEOUT_MS = 60_000;
const REPLY_TIMEOUT_MS = 30_000;

if (!/^https?:\/\//.test(baseUrl)) {
  console.error('usage: node chat_page.mjs http://HOST:PORT [screenshot.png]');
  process.exit(1);
}

let browser = null;
let page = null;
let step = 'starting';

class TestFailure extends Error {}
function check(cond, message) { if (!cond) throw new TestFailure(message); }

async function finish(code, message) {
  if (code !== 0) {
    console.error(`FAIL (${step}): ${message}`);
    if (page) {
      const failShot = shotPath.replace(/(\.png)?$/, '-failure.png');
      try { await page.screenshot({ path: failShot, fullPage: true, timeout: 3000 }); console.error(`  page screenshot: ${failShot}`); } catch { /* ignore */ }
      try { console.error(`  #status: ${JSON.stringify(await page.textContent('#status', { timeout: 1000 }))}`); } catch { /* ignore */ }
    }
  } else {
    console.log(message);
  }
  try { await browser?.close(); } catch { /* ignore */ }
  process.exit(code);
}

const globalTimer = setTimeout(() => finish(1, `timed out after ${TOTAL_TIMEOUT_MS / 1000} s`), TOTAL_TIMEOUT_MS);

// Text of the n-th (0-based) assistant message, or null if absent.
const assistantText = (n) => page.evaluate((n) => {
  const m = document.querySelectorAll('#messages .message.assistant')[n];
  return m ? m.textContent : null;
}, n);

// Resolves when no generation is running: Send enabled, Stop disabled.
async function waitIdle(what) {
  try {
    await page.waitForFunction(() => !document.querySelector('#send').disabled && document.querySelector('#stop').disabled,
      null, { timeout: REPLY_TIMEOUT_MS, polling: 20 });
  } catch {
    throw new TestFailure(`${what}: generation did not end within ${REPLY_TIMEOUT_MS / 1000} s (#send still disabled)`);
  }
}

// Records, inside the page, the length of assistant message #n on every DOM change (and every
// animation frame), plus whether Send was disabled at that moment. Optionally clicks Stop as soon as
// the message has text.
function observeAssistant(n, { stopOnFirstText = false } = {}) {
  return page.evaluate(({ n, stopOnFirstText }) => {
    const obs = { lengths: [], sendDisabledWhileText: true, stopClicked: false };
    window.__obs = obs;
    const sample = () => {
      const m = document.querySelectorAll('#messages .message.assistant')[n];
      if (!m) return;
      const len = m.textContent.length;
      if (len > 0) {
        if (obs.lengths[obs.lengths.length - 1] !== len) obs.lengths.push(len);
        if (m.classList.contains('streaming') && !document.querySelector('#send').disabled) obs.sendDisabledWhileText = false;
        if (stopOnFirstText && !obs.stopClicked) { obs.stopClicked = true; document.querySelector('#stop').click(); }
      }
    };
    const mo = new MutationObserver(sample);
    mo.observe(document.querySelector('#messages'), { childList: true, subtree: true, characterData: true });
    const raf = () => { sample(); if (window.__obs === obs) requestAnimationFrame(raf); };
    requestAnimationFrame(raf);
  }, { n, stopOnFirstText });
}
const observations = () => page.evaluate(() => { const o = window.__obs; window.__obs = null; return o; });

async function main() {
  step = 'launching Chromium';
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox'],
  });
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  const requests = [];
  page.on('request', (r) => {
    if (r.method() === 'POST' && new URL(r.url()).pathname === '/v1/chat/completions') {
      try { requests.push(JSON.parse(r.postData() || 'null')); } catch { requests.push(null); }
    }
  });
  const lastRequest = () => requests[requests.length - 1];

  step = 'loading the page';
  const res = await page.goto(baseUrl + '/', { waitUntil: 'load', timeout: 15_000 });
  check(res && res.ok(), `GET / returned HTTP ${res && res.status()}`);
  const ctype = res.headers()['content-type'] || '';
  check(/^text\/html/i.test(ctype), `GET / has Content-Type ${JSON.stringify(ctype)}, expected text/html`);
  const title = await page.title();
  check(/starling/i.test(title), `unexpected page title ${JSON.stringify(title)}`);
  for (const id of ['system', 'temperature', 'max-tokens', 'input', 'send', 'stop', 'new-chat', 'messages', 'status']) {
    check(await page.locator('#' + id).count() === 1, `the page has no #${id}`);
  }
  check(await page.$eval('#messages', (m) => m.childElementCount === 0 && m.textContent.trim() === ''),
    '#messages is not empty on a fresh page');
  check(await page.isEnabled('#send') && await page.isDisabled('#stop'), 'a fresh page should have Send enabled and Stop disabled');

  step = 'model name';
  const models = await (await fetch(baseUrl + '/v1/models')).json().catch(() => null);
  const modelId = models?.data?.[0]?.id;
  if (modelId) {
    try {
      await page.waitForFunction((id) => document.body.innerText.includes(id), modelId, { timeout: 5000 });
    } catch { throw new TestFailure(`the model name ${JSON.stringify(modelId)} from /v1/models is not shown`); }
  } else {
    console.log('note: GET /v1/models gave no model id (API key?); not checking the header');
  }

  // ---- 1. A streamed reply --------------------------------------------------------------------
  step = 'first reply (streaming)';
  const system = 'You are a friendly storyteller.';
  await page.fill('#system', system);
  await page.fill('#temperature', '0.8');
  await observeAssistant(0);
  const prompt1 = 'Tell me a story about a bird.';
  await page.fill('#input', prompt1);
  await page.click('#send');
  await waitIdle('first reply');
  const obs1 = await observations();
  const reply1 = await assistantText(0);
  check(await page.locator('#messages .message.user').count() === 1, 'expected exactly one .message.user');
  check((await page.textContent('#messages .message.user')) === prompt1, 'the user message does not show the typed text');
  check(await page.inputValue('#input') === '', '#input was not cleared after sending');
  const errs1 = await page.locator('#messages .message.error').allTextContents();
  check(errs1.length === 0, `the server answered with an error: ${errs1.join(' | ')}`);
  check(reply1 && reply1.trim().length > 0, 'the assistant reply is empty');
  check(obs1.lengths.length >= 2,
    `the reply did not stream: observed ${obs1.lengths.length} distinct non-empty length(s) ${JSON.stringify(obs1.lengths)} before completion`);
  check(obs1.lengths.every((v, i, a) => i === 0 || v > a[i - 1]), `the reply shrank while streaming: ${JSON.stringify(obs1.lengths)}`);
  check(obs1.sendDisabledWhileText, '#send was enabled while the reply was streaming');
  const req1 = lastRequest();
  check(req1 && req1.stream === true, 'the request did not ask for "stream": true');
  check(JSON.stringify(req1.messages) === JSON.stringify([{ role: 'system', content: system }, { role: 'user', content: prompt1 }]),
    `unexpected messages in the first request: ${JSON.stringify(req1.messages)}`);
  check(typeof req1.temperature === 'number' && Math.abs(req1.temperature - 0.8) < 1e-9, `temperature not sent as 0.8: ${req1.temperature}`);
  console.log(`ok: streamed reply of ${reply1.length} chars over ${obs1.lengths.length} observations`);

  step = 'screenshot';
  await page.screenshot({ path: shotPath, fullPage: true });
  console.log(`ok: screenshot ${shotPath}`);

  // ---- 2. Stop keeps the partial reply ---------------------------------------------------------
  step = 'stop';
  await page.fill('#max-tokens', '200');
  let stopped = false;
  for (let attempt = 1; attempt <= 3 && !stopped; attempt++) {
    const n = await page.locator('#messages .message.assistant').count();
    const historyBefore = [{ role: 'system', content: system }];
    const turns = await page.$$eval('#messages .message.user, #messages .message.assistant',
      (els) => els.map((e) => ({ role: e.classList.contains('user') ? 'user' : 'assistant', content: e.textContent })));
    historyBefore.push(...turns);
    await observeAssistant(n, { stopOnFirstText: true });
    const prompt = `Another story, please (${attempt}).`;
    await page.fill('#input', prompt);
    await page.click('#send');
    await waitIdle('after Stop');
    const obs = await observations();
    const req = lastRequest();
    check(req.max_tokens === 200, `max_tokens not sent as 200: ${req.max_tokens}`);
    check(JSON.stringify(req.messages) === JSON.stringify([...historyBefore, { role: 'user', content: prompt }]),
      `the request did not carry the whole conversation: ${JSON.stringify(req.messages)}`);
    check(obs.stopClicked, 'no assistant text appeared, so Stop was never clicked');
    const el = page.locator('#messages .message.assistant').nth(n);
    check(await el.count() === 1, 'the assistant message disappeared after Stop (the partial reply must stay)');
    const finishAttr = await el.getAttribute('data-finish');
    const partial = await el.textContent();
    check(partial && partial.length > 0, 'the partial reply is empty after Stop');
    if (finishAttr !== 'aborted') {
      console.log(`note: the reply finished (${finishAttr}) before Stop took effect; trying again`);
      continue;
    }
    await page.waitForTimeout(400);
    check((await el.textContent()) === partial, 'the reply kept growing after Stop');
    check(/stop/i.test(await page.textContent('#status')), 'the status does not say that generation was stopped');
    stopped = true;
    console.log(`ok: Stop ended generation with ${partial.length} chars kept`);
  }
  check(stopped, 'three replies in a row finished before Stop could abort them');

  // ---- 3. New chat, and the server answers after an aborted request; Enter / Shift+Enter -------
  step = 'new chat';
  await page.click('#new-chat');
  check(await page.$eval('#messages', (m) => m.childElementCount === 0), '#messages is not empty after New chat');
  step = 'reply after New chat (keyboard)';
  await page.fill('#max-tokens', '40');
  await page.focus('#input');
  await page.keyboard.type('Hello');
  await page.keyboard.press('Shift+Enter');
  await page.keyboard.type('there');
  check(await page.inputValue('#input') === 'Hello\nthere', 'Shift+Enter did not insert a newline');
  const nreq = requests.length;
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelectorAll('#messages .message.user').length === 1, null, { timeout: 5000 })
    .catch(() => { throw new TestFailure('Enter did not send the message'); });
  await waitIdle('reply after New chat');
  const req3 = requests[nreq];
  check(req3 && JSON.stringify(req3.messages) === JSON.stringify([{ role: 'system', content: system }, { role: 'user', content: 'Hello\nthere' }]),
    `New chat did not reset the conversation sent to the server: ${JSON.stringify(req3 && req3.messages)}`);
  const errs3 = await page.locator('#messages .message.error').allTextContents();
  check(errs3.length === 0, `the server answered with an error after an aborted request: ${errs3.join(' | ')}`);
  check(((await assistantText(0)) || '').length > 0, 'no reply after New chat (did the aborted request wedge the server?)');
  console.log('ok: New chat cleared the page; the server answered again; Enter/Shift+Enter work');

  // ---- 4. Errors are shown readably; model text is escaped (responses faked by the browser) ----
  step = 'error display';
  await page.click('#new-chat');
  await page.route('**/v1/chat/completions', (route) => route.fulfill({
    status: 400, contentType: 'application/json',
    body: JSON.stringify({ error: { message: 'max_tokens must be <b>positive</b>', type: 'invalid_request_error' } }),
  }), { times: 1 });
  await page.fill('#input', 'trigger an error');
  await page.click('#send');
  await waitIdle('error reply');
  const errText = (await page.locator('#messages .message.error').allTextContents()).join(' ');
  check(errText.includes('max_tokens must be <b>positive</b>') && errText.includes('400'),
    `the server's error is not shown readably (got ${JSON.stringify(errText)})`);
  check(await page.locator('#messages b').count() === 0, 'the error message was parsed as HTML');

  step = 'escaping';
  await page.click('#new-chat');
  const evil = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>';
  const sse = [
    { choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] },
    { choices: [{ index: 0, delta: { content: evil }, finish_reason: null }] },
    { choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] },
  ].map((c) => `data: ${JSON.stringify({ object: 'chat.completion.chunk', ...c })}\n\n`).join('') + 'data: [DONE]\n\n';
  await page.route('**/v1/chat/completions', (route) => route.fulfill({ status: 200, contentType: 'text/event-stream', body: sse }), { times: 1 });
  await page.fill('#input', 'say something nasty');
  await page.click('#send');
  await waitIdle('escaping reply');
  check((await assistantText(0)) === evil, `the model text was altered: ${JSON.stringify(await assistantText(0))}`);
  check(await page.locator('#messages img, #messages script').count() === 0, 'model output was inserted as HTML');
  check(await page.evaluate(() => window.__xss === undefined), 'model output ran script');
  console.log('ok: errors shown readably; model text escaped');

  check(pageErrors.length === 0, `JavaScript errors on the page: ${pageErrors.join(' | ')}`);
}

main().then(
  () => { clearTimeout(globalTimer); return finish(0, 'PASS: chat page'); },
  (e) => { clearTimeout(globalTimer); return finish(1, e instanceof TestFailure ? e.message : (e && e.stack) || String(e)); },
);
