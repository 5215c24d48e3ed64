#!/usr/bin/env node
// Launcher for `vigil`. CommonJS on purpose: it runs before anything has touched libuv's thread
// pool, so the pool size set here takes effect (an ES module entry is too late: the module
// loader already used the pool). Storage calls that hang (a dead NFS/sshfs server) each hold a
// pool thread until they return; a larger pool keeps the other datastores working meanwhile.
'use strict';
if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = '128';
import('../dist/main.js')
  .then((m) => m.main(process.argv))
  .catch((err) => {
    console.error(err && String(err.message || '').includes('dist/main.js') ? 'vigil is not built yet: run `npm run build`' : err);
    process.exit(1);
  });
