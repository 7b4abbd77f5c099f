// The Node.js target of `cargo xtask bench`: 256-byte Buffers (V8 keeps 64 bytes or less on its
// own heap), whose memory Node takes with malloc (freed by the GC later), made through a few
// JavaScript frames, timed by Node itself.
// Protocol: `ready PID`, wait for a line, run, print `ns <per allocation>`.
'use strict';

function makeBuffer() {
  return Buffer.allocUnsafeSlow(256);
}

function handle(requests) {
  let seen = 0;
  for (let i = 0; i < requests; i++) {
    seen ^= makeBuffer().length;
  }
  return seen;
}

const count = Number(process.argv[2]);
// Compiled before the measurement, as a running service's would be.
handle(300000);
process.stdout.write(`ready ${process.pid}\n`);
process.stdin.once('data', () => {
  const start = process.hrtime.bigint();
  const seen = handle(count);
  const ns = Number(process.hrtime.bigint() - start);
  process.stdout.write(`ns ${ns / count} ${seen & 1}\n`);
  process.exit(0);
});
