// Node.js ground truth for leakhound: each simulated connection keeps a 64 KiB native Buffer
// (Buffer.allocUnsafeSlow: its own malloc'd backing store, not a slice of the pool) that is
// never released. Protocol of truth.h: `ready <pid>`, wait for a line, allocate, print
// `truth acceptConnection <bytes>` and `done`, wait for a line, exit.
//
// Arguments: the connections kept after `go` (200), and calls made before `ready` (0): a
// process that has run for a while, whose acceptConnection V8 has compiled and optimized by
// the time it is traced. Those early buffers are dropped before `ready`.
'use strict';

const readline = require('readline');

const CONNECTION_BYTES = 64 * 1024;
const connections = Number(process.argv[2] || 200);
const warmUpCalls = Number(process.argv[3] || 0);
const open = [];

function acceptConnection(id) {
  const buffer = Buffer.allocUnsafeSlow(CONNECTION_BYTES);
  buffer.writeUInt32LE(id, 0);
  open.push(buffer);
}

for (let id = 0; id < warmUpCalls; id++) {
  acceptConnection(id);
  if (open.length >= 64) {
    open.length = 0;
  }
}
open.length = 0;

// Run a while before `ready`, so that V8's compilers have finished with what was warmed up.
setTimeout(() => console.log(`ready ${process.pid}`), warmUpCalls > 0 ? 2000 : 0);
const input = readline.createInterface({ input: process.stdin });
let lines = 0;
input.on('line', () => {
  lines += 1;
  if (lines === 1) {
    for (let id = 0; id < connections; id++) {
      acceptConnection(id);
    }
    console.log(`truth acceptConnection ${open.length * CONNECTION_BYTES}`);
    console.log('done');
  } else {
    // Node frees every backing store while it exits: a report must be taken before this.
    input.close();
    process.exit(0);
  }
});
