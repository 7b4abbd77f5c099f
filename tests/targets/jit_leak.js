// Node.js ground truth for leakhound: each simulated connection keeps a 64 KiB native Buffer
// (Buffer.allocUnsafeSlow: its own malloc'd backing store, not a slice of the pool) that is
// never released. Protocol of truth.h: `ready <pid>`, wait for a line, allocate, print
// `truth acceptConnection <bytes>` and `done`, wait for a line, exit.
'use strict';

const readline = require('readline');

const CONNECTION_BYTES = 64 * 1024;
const connections = Number(process.argv[2] || 200);
const open = [];

function acceptConnection(id) {
  const buffer = Buffer.allocUnsafeSlow(CONNECTION_BYTES);
  buffer.writeUInt32LE(id, 0);
  open.push(buffer);
}

console.log(`ready ${process.pid}`);
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
