// Buffer allocation microbenchmark for `cargo xtask bench`, in Node: the cost per allocation
// made from JavaScript, whose stack has JavaScript frames for leakhound to read.
//
// usage: node node_alloc.js THREADS BUFFERS ROUNDS   (THREADS is ignored: one thread)
//
// Prints "ready PID" and waits for a line on stdin (the handshake that lets a tracer attach
// before anything is timed). Then it runs ROUNDS rounds; in each it makes BUFFERS Buffers of
// 1 KiB with their own malloc'd memory (Buffer.allocUnsafeSlow) from a call chain three
// functions deep, drops them, and prints "round NS": the wall time per Buffer. (V8 keeps a
// typed array of up to 64 bytes in its own heap, with no malloc: hence 1 KiB.)
'use strict';

const readline = require('readline');

const buffers = Number(process.argv[3] || 20000);
const rounds = Number(process.argv[4] || 5);
const BUFFER_BYTES = 1024;

function makeBuffer() {
  return Buffer.allocUnsafeSlow(BUFFER_BYTES);
}

function handleRequest(i) {
  const buffer = makeBuffer();
  buffer[0] = i & 0xff;
  return buffer[0];
}

function serve(count) {
  let sum = 0;
  for (let i = 0; i < count; i++) {
    sum += handleRequest(i);
  }
  return sum;
}

// Warm up: V8 compiles and optimizes the chain before the timed rounds, as in a service.
serve(buffers);

console.log(`ready ${process.pid}`);
const input = readline.createInterface({ input: process.stdin });
input.once('line', () => {
  for (let round = 0; round < rounds; round++) {
    const start = process.hrtime.bigint();
    serve(buffers);
    const ns = Number(process.hrtime.bigint() - start);
    console.log(`round ${(ns / buffers).toFixed(2)}`);
  }
  input.close();
});
