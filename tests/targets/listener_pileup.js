// A loopback server whose `message` listeners pile up: every message adds a listener that
// keeps its own state (1024 doubles, about 8 KiB of V8 heap) and is never removed. The heap
// is V8's, committed with mprotect inside reservations; no Buffer, no malloc of note.
// Protocol of truth.h: `ready <pid>`, wait for a line and a second, then for SECONDS send MESSAGES_PER_TICK
// messages every 50 ms to itself over 127.0.0.1, print `truth listeners <n>` and `done`,
// wait for a line, exit.
'use strict';

const net = require('net');
const readline = require('readline');
const { EventEmitter } = require('events');

const seconds = Number(process.argv[2] || 6);
const perTick = Number(process.argv[3] || 64);
const hub = new EventEmitter();
hub.setMaxListeners(0);
let listeners = 0;

function addMessageListener(n) {
  const state = new Array(1024).fill(n + 0.5);
  hub.on('message', () => state.length);
  listeners += 1;
}

const server = net.createServer((socket) => {
  let pending = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk) => {
    pending += chunk;
    let newline;
    while ((newline = pending.indexOf('\n')) >= 0) {
      addMessageListener(Number(pending.slice(0, newline)));
      pending = pending.slice(newline + 1);
    }
  });
});

function run() {
  const client = net.connect(server.address().port, '127.0.0.1', () => {
    let sent = 0;
    const started = Date.now();
    const timer = setInterval(() => {
      let batch = '';
      for (let i = 0; i < perTick; i++) batch += `${sent++}\n`;
      client.write(batch);
      if (Date.now() - started >= seconds * 1000) {
        clearInterval(timer);
        client.end();
        // Let the server read what is in flight.
        setTimeout(() => {
          console.log(`truth listeners ${listeners}`);
          console.log('done');
        }, 200);
      }
    }, 50);
  });
}

server.listen(0, '127.0.0.1', () => {
  console.log(`ready ${process.pid}`);
  const input = readline.createInterface({ input: process.stdin });
  let lines = 0;
  input.on('line', () => {
    lines += 1;
    if (lines === 1) {
      // A second first, so that the tracer's first sample comes before any growth.
      setTimeout(run, 1000);
    } else {
      input.close();
      process.exit(0);
    }
  });
});
