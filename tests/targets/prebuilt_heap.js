// A JavaScript heap built before any tracer attaches: MIB mebibytes of arrays of doubles
// (about 1 KiB each), all kept. Protocol of truth.h: builds the heap, prints `ready <pid>`,
// waits for a line, prints V8's own figures for its heap (`truth v8_physical <bytes>`, the
// resident bytes of its pages, and `truth v8_committed <bytes>`) and `done`, waits for a line,
// exits.
'use strict';

const readline = require('readline');
const v8 = require('v8');

const mib = Number(process.argv[2] || 48);
const kept = [];
for (let i = 0; i < mib * 1024; i++) kept.push(new Array(120).fill(i + 0.5));

const lines = readline.createInterface({ input: process.stdin });
let seen = 0;
lines.on('line', () => {
  seen += 1;
  if (seen === 1) {
    const heap = v8.getHeapStatistics();
    console.log(`truth v8_physical ${heap.total_physical_size}`);
    console.log(`truth v8_committed ${heap.total_heap_size}`);
    console.log(`truth kept_arrays ${kept.length}`);
    console.log('done');
  } else {
    process.exit(0);
  }
});
console.log(`ready ${process.pid}`);
