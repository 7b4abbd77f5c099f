// Node.js ground truth for leakhound under a collector that moves code and functions: two
// functions keep native Buffers of different sizes, and a full, compacting collection runs
// between rounds of calls (run with --expose-gc --stress-compaction, which evacuates pages on
// every full collection, so SharedFunctionInfos change address while they are traced).
// Protocol of truth.h: `ready <pid>`, wait for a line, allocate, print `truth <function>
// <bytes>` and `done`, wait for a line, exit.
'use strict';

const readline = require('readline');

const rounds = Number(process.argv[2] || 40);
// Sizes no sum of the other's makes (within 200 calls), so that a stack that holds one
// function's buffers under the other's name shows in its bytes.
const CONNECTION_BYTES = 64 * 1024;
const SESSION_BYTES = 20000;
const open = [];

function acceptConnection(id) {
  const buffer = Buffer.allocUnsafeSlow(CONNECTION_BYTES);
  buffer.writeUInt32LE(id, 0);
  open.push(buffer);
}

function openSession(id) {
  const buffer = Buffer.allocUnsafeSlow(SESSION_BYTES);
  buffer.writeUInt32LE(id, 0);
  open.push(buffer);
}

// Garbage for the collector to compact around.
let litter = [];

console.log(`ready ${process.pid}`);
const input = readline.createInterface({ input: process.stdin });
let lines = 0;
input.on('line', () => {
  lines += 1;
  if (lines > 1) {
    input.close();
    process.exit(0);
  }
  let round = 0;
  const step = () => {
    for (let i = 0; i < 5; i++) {
      acceptConnection(round * 5 + i);
      openSession(round * 5 + i);
    }
    litter = Array.from({ length: 2000 }, (_, i) => ({ i, s: `x${i}` }));
    global.gc();
    round += 1;
    if (round < rounds) {
      // A pause between rounds, as a service has between requests.
      setTimeout(step, 100);
    } else {
      console.log(`truth acceptConnection ${rounds * 5 * CONNECTION_BYTES}`);
      console.log(`truth openSession ${rounds * 5 * SESSION_BYTES}`);
      console.log('done');
    }
  };
  step();
});
