#!/usr/bin/env node
// Thin launcher so the bin exists before the TypeScript build runs (npm links bins at install).
import('../dist/main.js').then((m) => m.main(process.argv)).catch((err) => {
  console.error(err instanceof Error && err.message.includes('dist/main.js') ? 'vigil is not built yet: run `npm run build`' : err);
  process.exit(1);
});
