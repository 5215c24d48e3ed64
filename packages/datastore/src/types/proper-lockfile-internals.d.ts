declare module 'proper-lockfile/lib/lockfile.js' {
  const internals: { getLocks(): Record<string, { updateTimeout?: NodeJS.Timeout | null }> };
  export default internals;
}
