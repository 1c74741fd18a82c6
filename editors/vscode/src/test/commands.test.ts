import assert from 'node:assert/strict';
import { test } from 'node:test';

import { formatScanReport, showStatus, summarizeStatus, WorkspaceScanner } from '../commands';

// The status of a watching session, from docs/protocol.md.
const STATUS = {
  version: '0.1.0',
  roots: ['/home/me/proj'],
  symlinkPolicy: 'denyCrossRoot',
  fdLimit: 100,
  maxFileBytes: 67108864,
  watcher: { enabled: true, debounceMs: 250 },
  counters: {
    requests: { 'ploke/hashFiles': 1, 'ploke/writeSnippets': 1, 'ploke/status': 1 },
    errors: {},
    filesRead: 1,
    notifications: 1,
    watcher: { roots: ['/home/me/proj'], degraded: false, files: 3004, errors: [], events: 14 },
  },
};

function sinkRecorder() {
  const infos: string[] = [];
  const logs: string[] = [];
  return { infos, logs, sink: { info: (m: string) => infos.push(m), log: (l: string) => logs.push(l) } };
}

test('summarizeStatus: watching session', () => {
  assert.equal(
    summarizeStatus(STATUS),
    'ploke-io-server 0.1.0, root /home/me/proj, watching 3004 files, 3 requests, 1 change notification',
  );
});

test('summarizeStatus: not watching, several roots, errors, degraded watcher tolerated', () => {
  assert.equal(
    summarizeStatus({
      version: '0.1.0',
      roots: ['/a', '/b'],
      watcher: { enabled: false },
      counters: { requests: { 'ploke/status': 1 }, errors: { NotFound: 2, Io: 1 } },
    }),
    'ploke-io-server 0.1.0, 2 roots, not watching, 1 request, 3 item errors',
  );
  assert.match(
    summarizeStatus({ ...STATUS, counters: { watcher: { files: 1, degraded: true, errors: ['x'] } } }),
    /watching 1 file \(degraded: polling\) \(1 watcher error\)/,
  );
  assert.equal(summarizeStatus(null), 'ploke-io-server ?, 0 roots, not watching, 0 requests');
});

test('showStatus sends ploke/status, shows the summary and logs the full JSON', async () => {
  const calls: [string, unknown][] = [];
  const { infos, logs, sink } = sinkRecorder();
  const summary = await showStatus(async (method, params) => {
    calls.push([method, params]);
    return STATUS;
  }, sink);
  assert.deepEqual(calls, [['ploke/status', {}]]);
  assert.deepEqual(infos, [summary]);
  assert.equal(logs.length, 1);
  assert.deepEqual(JSON.parse(logs[0].replace(/^ploke\/status: /, '')), STATUS);
});

test('showStatus propagates a request error', async () => {
  const { infos, sink } = sinkRecorder();
  await assert.rejects(showStatus(() => Promise.reject(new Error('boom')), sink), /boom/);
  assert.deepEqual(infos, []);
});

/** A fake server over an in-memory file system: path -> hash. */
function fakeServer(files: Map<string, string>) {
  const calls: { method: string; size: number }[] = [];
  const send = async (method: string, params: object): Promise<unknown> => {
    const p = params as { paths?: string[]; files?: { filePath: string; fileHash: string }[] };
    if (method === 'ploke/hashFiles') {
      calls.push({ method, size: p.paths!.length });
      return {
        results: p.paths!.map((path) =>
          files.has(path)
            ? { ok: true, fileHash: files.get(path), size: 1 }
            : { ok: false, error: { code: -33003, kind: 'NotFound', message: `${path}: no such file` } },
        ),
      };
    }
    if (method === 'ploke/scanChanges') {
      calls.push({ method, size: p.files!.length });
      return {
        results: p.files!.map(({ filePath, fileHash }) => {
          if (filePath.endsWith('/locked')) {
            return { status: 'error', error: { code: -33005, kind: 'PermissionDenied', message: 'locked: denied' } };
          }
          const h = files.get(filePath);
          if (h === undefined) return { status: 'removed' };
          return h === fileHash ? { status: 'unchanged' } : { status: 'modified', newHash: h };
        }),
      };
    }
    throw new Error(`unexpected ${method}`);
  };
  return { send, calls };
}

test('scanner: first run hashes, later runs scan and report unchanged/modified/removed/new', async () => {
  const fs = new Map([
    ['/w/a', 'h1'],
    ['/w/b', 'h2'],
    ['/w/c', 'h3'],
  ]);
  const { send, calls } = fakeServer(fs);
  const scanner = new WorkspaceScanner(send);

  const r1 = await scanner.scan(['/w/a', '/w/b', '/w/c', '/w/a']);
  assert.equal(r1.firstRun, true);
  assert.equal(r1.hashed, 3);
  assert.equal(r1.known, 3);
  assert.deepEqual(calls, [{ method: 'ploke/hashFiles', size: 3 }]);
  assert.equal(formatScanReport(r1), 'Ploke: hashed 3 files; run Scan Workspace again to see what changed');

  fs.set('/w/b', 'h2b');
  fs.delete('/w/c');
  fs.set('/w/d', 'h4');
  calls.length = 0;
  const r2 = await scanner.scan(['/w/a', '/w/b', '/w/d']);
  assert.deepEqual(
    { ...r2, errorSamples: undefined },
    { firstRun: false, hashed: 1, unchanged: 1, modified: 1, removed: 1, added: 1, errors: 0, errorSamples: undefined, known: 3 },
  );
  assert.deepEqual(calls, [
    { method: 'ploke/scanChanges', size: 3 },
    { method: 'ploke/hashFiles', size: 1 },
  ]);
  assert.equal(formatScanReport(r2), 'Ploke: 1 unchanged, 1 modified, 1 removed, 1 new');

  // The hashes were updated: nothing changed since.
  const r3 = await scanner.scan(['/w/a', '/w/b', '/w/d']);
  assert.equal(formatScanReport(r3), 'Ploke: 3 unchanged, 0 modified, 0 removed');
});

test('scanner: item errors are counted and sampled; the file stays known', async () => {
  const fs = new Map([
    ['/w/a', 'h1'],
    ['/w/locked', 'h2'],
  ]);
  const { send } = fakeServer(fs);
  const scanner = new WorkspaceScanner(send);
  const r1 = await scanner.scan(['/w/a', '/w/locked', '/w/ghost']);
  assert.equal(r1.hashed, 2);
  assert.equal(r1.errors, 1);
  assert.deepEqual(r1.errorSamples, ['/w/ghost: NotFound: /w/ghost: no such file']);
  assert.match(formatScanReport(r1), /\(1 error, see the server log\)$/);
  const r2 = await scanner.scan(['/w/a', '/w/locked']);
  assert.equal(r2.unchanged, 1);
  assert.equal(r2.errors, 1);
  assert.equal(r2.known, 2);
  assert.deepEqual(r2.errorSamples, ['/w/locked: PermissionDenied: locked: denied']);
});

test('scanner: batches are split into chunks; reset starts over', async () => {
  const fs = new Map(Array.from({ length: 7 }, (_, i) => [`/w/${i}`, `h${i}`] as [string, string]));
  const { send, calls } = fakeServer(fs);
  const scanner = new WorkspaceScanner(send, 3);
  await scanner.scan([...fs.keys()]);
  assert.deepEqual(calls.map((c) => c.size), [3, 3, 1]);
  calls.length = 0;
  const r = await scanner.scan([...fs.keys()]);
  assert.equal(r.unchanged, 7);
  assert.deepEqual(calls.map((c) => `${c.method}:${c.size}`), ['ploke/scanChanges:3', 'ploke/scanChanges:3', 'ploke/scanChanges:1']);
  scanner.reset();
  assert.equal(scanner.knownFiles, 0);
  assert.equal((await scanner.scan(['/w/0'])).firstRun, true);
});

test('scanner: a reply of the wrong length is an error, not a silent miscount', async () => {
  const scanner = new WorkspaceScanner(async () => ({ results: [] }));
  await assert.rejects(scanner.scan(['/w/a']), /ploke\/hashFiles: expected 1 results/);
});
