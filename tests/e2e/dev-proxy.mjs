// Development helper: serves crates/demon-server/web/* from disk and forwards everything else
// (REST, MCP, the WebSocket upgrade) to a running `demon serve`, so UI edits show on reload
// without rebuilding the binary (the binary embeds the files at compile time).
//
//   node tests/e2e/dev-proxy.mjs 7878 7880    # server on 7878, open http://127.0.0.1:7880/
//
// ui.test.mjs uses it when E2E_DEV_ASSETS=1.

import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

// Dev mode: serve the UI files from disk, forward everything else (HTTP and the WebSocket
// upgrade) to the server, so UI edits need no Rust rebuild.
export async function devProxy(target, port = 0) {
  const web = path.join(ROOT, 'crates/demon-server/web');
  const files = { '/': 'index.html', '/app.js': 'app.js', '/worklet.js': 'worklet.js', '/style.css': 'style.css', '/vendor/fzstd.mjs': 'vendor/fzstd.mjs' };
  const types = { '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.html': 'text/html' };
  const proxy = http.createServer((req, res) => {
    const file = files[new URL(req.url, 'http://x').pathname];
    if (file) {
      res.writeHead(200, { 'content-type': types[path.extname(file)] });
      res.end(fs.readFileSync(path.join(web, file)));
      return;
    }
    const up = http.request({ host: '127.0.0.1', port: target, path: req.url, method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  proxy.on('upgrade', (req, socket, head) => {
    const up = net.connect(target, '127.0.0.1', () => {
      let h = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) h += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(`${h}\r\n`);
      if (head.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    up.on('error', () => socket.destroy());
    socket.on('error', () => up.destroy());
  });
  await new Promise((r) => proxy.listen(port, '127.0.0.1', r));
  if (port === 0) proxy.unref();
  return proxy.address().port;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const target = Number(process.argv[2] || 7878);
  const port = Number(process.argv[3] || 7880);
  const p = await devProxy(target, port);
  console.log(`UI from ${path.join(ROOT, 'crates/demon-server/web')} on http://127.0.0.1:${p}/ → server on 127.0.0.1:${target}`);
  setInterval(() => {}, 1 << 30);
}
