// Drives the REAL ploke-io-server over stdio with vscode-jsonrpc (the transport under
// vscode-languageclient), using the extension's own builders and command handlers.
// The interpreter is $PLOKE_PYTHON (default python3); it must be able to import
// ploke_io_server.
import assert from 'node:assert/strict';
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, realpathSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { createMessageConnection, MessageConnection, StreamMessageReader, StreamMessageWriter } from 'vscode-jsonrpc/node';

import { formatScanReport, SendRequest, showStatus, WorkspaceScanner } from '../commands';
import { buildInitializeParams, buildServerOptions, Folder, resolveSettings } from '../config';
import { DID_CHANGE_FILES, formatDidChangeFiles } from '../events';

const PYTHON = process.env.PLOKE_PYTHON || 'python3';

async function waitFor<T>(what: string, probe: () => T | undefined, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('real server: initialize with watch, ploke/status, scan, didChangeFiles round trip, shutdown', { timeout: 90_000 }, async (t) => {
  const probe = spawnSync(PYTHON, ['-c', 'import ploke_io_server'], { encoding: 'utf8' });
  assert.equal(
    probe.status,
    0,
    `PLOKE_PYTHON=${PYTHON} cannot import ploke_io_server (${probe.error ?? probe.stderr}); ` +
      'point PLOKE_PYTHON at a python that has it installed, e.g. the repo\'s .venv/bin/python',
  );

  const root = realpathSync(mkdtempSync(join(tmpdir(), 'ploke-vscode-')));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  mkdirSync(join(root, 'src'));
  const a = join(root, 'src', 'a.rs');
  const b = join(root, 'b.md');
  writeFileSync(a, 'fn main() {}\n');
  writeFileSync(b, '# b\n');

  // The same builders the extension uses; --root as an operator would, and a short debounce.
  const folders: Folder[] = [{ uri: pathToFileURL(root).href, name: basename(root), fsPath: root }];
  const settings = resolveSettings(
    { command: [PYTHON, '-m', 'ploke_io_server'], args: ['--root', root, '--debounce-ms', '50'] },
    folders,
  );
  assert.deepEqual(settings.warnings, []);
  const exe = buildServerOptions(settings, folders);
  const proc: ChildProcess = spawn(exe.command, exe.args ?? [], { cwd: exe.options?.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  t.after(() => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  });

  const conn: MessageConnection = createMessageConnection(
    new StreamMessageReader(proc.stdout!),
    new StreamMessageWriter(proc.stdin!),
  );
  const events: unknown[] = [];
  const lines: string[] = [];
  const logMessages: unknown[] = [];
  conn.onNotification(DID_CHANGE_FILES, (params: { events: unknown[] }) => {
    events.push(...params.events);
    lines.push(...formatDidChangeFiles(params));
  });
  conn.onNotification('window/logMessage', (p: unknown) => logMessages.push(p));
  conn.listen();
  t.after(() => conn.dispose());
  const send: SendRequest = (method, params) => conn.sendRequest(method, params);

  try {
    // initialize: answered once the root is watched and indexed.
    const init = (await conn.sendRequest('initialize', buildInitializeParams(folders, process.pid))) as {
      serverInfo: { name: string };
    };
    assert.equal(init.serverInfo.name, 'ploke-io-server');
    await conn.sendNotification('initialized', {});
    assert.deepEqual(logMessages, [], 'no warning about the workspace folder');

    // Ploke: Show Status.
    const infos: string[] = [];
    const logs: string[] = [];
    const summary = await showStatus(send, { info: (m) => infos.push(m), log: (l) => logs.push(l) });
    assert.deepEqual(infos, [summary]);
    assert.match(summary, new RegExp(`^ploke-io-server \\S+, root ${root.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}, watching 2 files, 1 request`));
    const status = JSON.parse(logs[0].replace(/^ploke\/status: /, ''));
    assert.deepEqual(status.roots, [root]);
    assert.equal(status.watcher.enabled, true);

    // Ploke: Scan Workspace, first run: hashes.
    const scanner = new WorkspaceScanner(send);
    const r1 = await scanner.scan([a, b]);
    assert.equal(formatScanReport(r1), 'Ploke: hashed 2 files; run Scan Workspace again to see what changed');

    // Changes outside the server: one notification (or a few) with one line per event.
    const c = join(root, 'src', 'c.rs');
    // c is created before b is removed: a new file that reuses a removed file's inode in the
    // same debounce window is reported as `renamed` (docs/watcher.md, coalescing).
    writeFileSync(c, 'pub fn c() {}\n');
    writeFileSync(a, 'fn main() { println!("changed"); }\n');
    unlinkSync(b);
    await waitFor('didChangeFiles for a, b and c', () =>
      [`modified ${a}`, `removed  ${b}`, `created  ${c}`].every((l) => lines.includes(l)) ? true : undefined,
    );

    // A write through the daemon carries its origin.
    const d = join(root, 'gen', 'd.rs');
    const created = (await conn.sendRequest('ploke/createFiles', {
      origin: 'vscode-test',
      files: [{ filePath: d, content: 'pub fn d() {}\n', createParents: true }],
    })) as { results: { ok: boolean }[] };
    assert.equal(created.results[0].ok, true);
    await waitFor('didChangeFiles for d with its origin', () =>
      lines.includes(`created  ${d} [origin: vscode-test]`) ? true : undefined,
    );
    assert.ok(events.length >= 4);

    // Ploke: Scan Workspace, second run: the scan sees what the watcher reported.
    const r2 = await scanner.scan([a, c, d]);
    assert.deepEqual(
      { unchanged: r2.unchanged, modified: r2.modified, removed: r2.removed, added: r2.added, errors: r2.errors },
      { unchanged: 0, modified: 1, removed: 1, added: 2, errors: 0 },
    );
    assert.equal(formatScanReport(r2), 'Ploke: 0 unchanged, 1 modified, 1 removed, 2 new');
    const r3 = await scanner.scan([a, c, d]);
    assert.equal(formatScanReport(r3), 'Ploke: 3 unchanged, 0 modified, 0 removed');

    // The counters saw the notifications.
    const s2 = (await send('ploke/status', {})) as { counters: { notifications: number } };
    assert.ok(s2.counters.notifications >= 2);

    // Clean LSP shutdown: exit code 0.
    assert.equal(await conn.sendRequest('shutdown'), null);
    await conn.sendNotification('exit');
    assert.equal(await exited, 0);
  } catch (err) {
    // Show what the server said when something fails.
    console.error(`server stderr:\n${stderr}\nlines:\n${lines.join('\n')}`);
    throw err;
  }
});
