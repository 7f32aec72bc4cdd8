// Bundles the chat page of `starling serve` into ONE self-contained HTML file: chat.html (the
// markup) with chat.css, highlight.js's GitHub themes and the esbuild bundle of chat.js (which
// imports marked, DOMPurify and highlight.js) inlined. No CDN, no external URL: the page works
// offline. The output is what src/server/web_page.cpp embeds (CMake runs this; see CMakeLists.txt).
//
//   node src/server/web/build.mjs OUTPUT.html
//
// If node_modules is missing or does not hold the pinned versions, runs `npm ci` here first.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const output = process.argv[2];
if (!output) {
  console.error('usage: node build.mjs OUTPUT.html');
  process.exit(2);
}

function fail(message) {
  console.error(`build.mjs: ${message}`);
  process.exit(1);
}

const readJson = (file) => JSON.parse(fs.readFileSync(file, 'utf8'));
const pkg = readJson(path.join(here, 'package.json'));
const pinned = { ...pkg.dependencies, ...pkg.devDependencies };

// The packages whose installed version differs from package.json's pin (or that are missing).
function stalePackages() {
  return Object.entries(pinned).filter(([name, version]) => {
    try {
      return readJson(path.join(here, 'node_modules', name, 'package.json')).version !== version;
    } catch {
      return true;
    }
  }).map(([name]) => name);
}

let stale = stalePackages();
if (stale.length) {
  console.error(`build.mjs: installing the chat page's npm packages (${stale.join(', ')}): npm ci in ${here}`);
  try {
    execFileSync('npm', ['ci', '--no-audit', '--no-fund', '--prefer-offline'], { cwd: here, stdio: 'inherit' });
  } catch (e) {
    fail(`npm ci failed in ${here} (${e.message}). Run \`bash scripts/setup.sh\` once with access to the npm registry.`);
  }
  stale = stalePackages();
  if (stale.length) fail(`after npm ci, still missing or wrong version: ${stale.join(', ')}`);
}

const { build, transform } = await import('esbuild');

// License notices of the bundled libraries, in full, as one legal comment at the top of the
// script (marked's and highlight.js's own headers are not legal comments, so esbuild would drop
// them). DOMPurify also keeps its own /*! @license */ banner.
const bundled = ['marked', 'dompurify', 'highlight.js'];
const notices = bundled.map((name) => {
  const dir = path.join(here, 'node_modules', name);
  const meta = readJson(path.join(dir, 'package.json'));
  const licenseFile = fs.readdirSync(dir).find((f) => /^licen[cs]e(\.md|\.txt)?$/i.test(f));
  if (!licenseFile) fail(`${name} has no LICENSE file to copy into the bundle`);
  const text = fs.readFileSync(path.join(dir, licenseFile), 'utf8').trim();
  return `${name} ${meta.version} (${meta.license}), ${meta.homepage || ''}\n\n${text}`;
});
const banner = '/*! The chat page of starling.cpp bundles these libraries; their licenses follow.\n\n' +
  notices.join('\n\n----------------------------------------------------------------\n\n').replaceAll('*/', '* /') +
  '\n*/';

const js = await build({
  entryPoints: [path.join(here, 'chat.js')],
  bundle: true,
  format: 'iife',
  target: ['es2020'],
  minify: true,
  legalComments: 'inline',
  charset: 'utf8',
  write: false,
  logLevel: 'warning',
});
const script = banner + '\n' + js.outputFiles[0].text;

// highlight.js's GitHub themes: the light one always, the dark one when the browser prefers dark.
const theme = (name) => fs.readFileSync(path.join(here, 'node_modules/highlight.js/styles', name), 'utf8');
const cssSource = fs.readFileSync(path.join(here, 'chat.css'), 'utf8') + '\n' + theme('github.css') +
  '\n@media (prefers-color-scheme: dark) {\n' + theme('github-dark.css') + '\n}\n';
const css = (await transform(cssSource, { loader: 'css', minify: true, legalComments: 'inline', charset: 'utf8' })).code;

// Inline both into the markup. Inlined text must not close its element early.
if (/<\/script/i.test(script)) fail('the script contains "</script", which would end the inline <script> early');
if (/<\/style/i.test(css)) fail('the CSS contains "</style", which would end the inline <style> early');
let html = fs.readFileSync(path.join(here, 'chat.html'), 'utf8');
// Self-contained: neither the markup nor the CSS may load anything from elsewhere. (The script's
// strings are not checked: DOMPurify's and highlight.js's tables mention tags and attributes.)
const external = html.match(/<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=/i) || css.match(/@import|url\(\s*['"]?(https?:)?\/\//i);
if (external) fail(`the page would load an external resource: ${external[0]}`);
for (const marker of ['<!-- @inline-css -->', '<!-- @inline-js -->']) {
  if (html.split(marker).length !== 2) fail(`chat.html must contain ${marker} exactly once`);
}
// Function replacements: the inlined text may contain "$&" and the like.
html = html.replace('<!-- @inline-css -->', () => `<style>\n${css}</style>`)
  .replace('<!-- @inline-js -->', () => `<script>\n${script}</script>`);


// The server adds its CSP nonce by replacing each "<script>" and "<style>" in the page
// (SendChatPage in src/server/server.cpp): one more inside the bundle would corrupt its code.
for (const tag of ['<script>', '<style>']) {
  const n = html.split(tag).length - 1;
  if (n !== 1) fail(`the page has ${n} "${tag}", expected exactly one (the server puts its CSP nonce into each)`);
}

fs.mkdirSync(path.dirname(path.resolve(output)), { recursive: true });
const tmp = `${output}.tmp-${process.pid}`;
fs.writeFileSync(tmp, html);
fs.renameSync(tmp, output);   // atomic: an interrupted build never leaves half a page
console.log(`build.mjs: wrote ${output} (${(Buffer.byteLength(html) / 1024).toFixed(1)} KiB)`);
