// Runs one model in onnxruntime-web (WASM) inside headless Chromium, driven by playwright-core.
// Usage: node web_run.js spec.json   (spec as for run_bundle.js: model, level, inputs[], out_dir)
// Env: CHROMIUM (default /usr/bin/chromium). Files are served by a server on 127.0.0.1 (no network needed). Writes out_dir/outputs.json and one raw little-endian file per output.
'use strict';

const fs = require('fs');
const http = require('http');
const path = require('path');
const { chromium } = require('playwright-core');

const DIST = path.join(__dirname, 'node_modules', 'onnxruntime-web', 'dist');
const TYPES = { '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm',
  '.html': 'text/html' };
const PAGE = '<!doctype html><html><head><script src="/dist/ort.wasm.min.js"></script></head><body></body></html>';

// A loopback HTTP server: large models cannot go through page routing (DevTools caps messages at 100 MB).
function serve(spec) {
  const files = [spec.model, ...spec.inputs.map((i) => i.file)];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    let body = null;
    let type = 'application/octet-stream';
    if (url.pathname === '/index.html') {
      [body, type] = [PAGE, 'text/html'];
    } else if (url.pathname.startsWith('/dist/')) {
      const file = path.join(DIST, path.basename(url.pathname));
      if (fs.existsSync(file)) [body, type] = [fs.readFileSync(file), TYPES[path.extname(file)]];
    } else {
      const match = url.pathname.match(/^\/files\/(\d+)$/);
      if (match && Number(match[1]) < files.length) body = fs.readFileSync(files[Number(match[1])]);
    }
    res.writeHead(body === null ? 404 : 200, { 'Content-Type': type });
    res.end(body === null ? 'not found' : body);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

// Runs in the page: fetch the model and inputs, run one session, return outputs as base64.
async function runInPage(spec) {
  const ort = window.ort;
  ort.env.wasm.numThreads = 1; // no COOP/COEP headers here, so no SharedArrayBuffer threads
  ort.env.wasm.wasmPaths = '/dist/';
  const bytes = async (i) => new Uint8Array(await (await fetch(`/files/${i}`)).arrayBuffer());
  const ARRAYS = { float32: Float32Array, int64: BigInt64Array, int32: Int32Array, uint8: Uint8Array,
    int8: Int8Array, float64: Float64Array, bool: Uint8Array };
  const session = await ort.InferenceSession.create(await bytes(0), {
    executionProviders: ['wasm'], graphOptimizationLevel: spec.level || 'extended' });
  const feeds = {};
  for (let i = 0; i < spec.inputs.length; i++) {
    const input = spec.inputs[i];
    const raw = await bytes(i + 1);
    feeds[input.name] = new ort.Tensor(input.dtype, new ARRAYS[input.dtype](raw.buffer), input.dims);
  }
  const results = await session.run(feeds);
  return session.outputNames.map((name) => {
    const t = results[name];
    const u8 = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    let s = '';
    for (let k = 0; k < u8.length; k += 0x8000) s += String.fromCharCode.apply(null, u8.subarray(k, k + 0x8000));
    return { name, dtype: t.type, dims: t.dims, data: btoa(s) };
  });
}

async function main() {
  const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const profile = fs.mkdtempSync(path.join(spec.out_dir, 'chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const server = await serve(spec);
  try {
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (err) => errors.push(String(err)));
    page.on('crash', () => errors.push('the page crashed'));
    page.on('console', (msg) => { if (msg.type() === 'error') process.stderr.write(`console: ${msg.text()}\n`); });
    await page.goto(`http://127.0.0.1:${server.address().port}/index.html`);
    const outputs = await page.evaluate(runInPage, { level: spec.level, inputs: spec.inputs.map(
      ({ name, dtype, dims }) => ({ name, dtype, dims })) });
    if (errors.length) throw new Error(`page errors: ${errors.join('; ')}`);
    const written = outputs.map((out, i) => {
      const file = path.join(spec.out_dir, `output_${i}.bin`);
      fs.writeFileSync(file, Buffer.from(out.data, 'base64'));
      return { name: out.name, dtype: out.dtype, dims: out.dims, file };
    });
    fs.writeFileSync(path.join(spec.out_dir, 'outputs.json'), JSON.stringify(written));
  } finally {
    server.close();
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
