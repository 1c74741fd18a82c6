import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import {
  buildClientOptions,
  buildInitializeParams,
  buildServerOptions,
  DEFAULT_COMMAND,
  Folder,
  resolveSettings,
} from '../config';

const ROOT = join(__dirname, '..', '..');
const A: Folder = { uri: 'file:///home/me/proj', name: 'proj', fsPath: '/home/me/proj' };
const B: Folder = { uri: 'file:///home/me/lib', name: 'lib', fsPath: '/home/me/lib' };

test('default settings launch python3 -m ploke_io_server over stdio in the first folder', () => {
  const s = resolveSettings({}, [A, B]);
  assert.deepEqual(s, { command: ['python3', '-m', 'ploke_io_server'], args: [], warnings: [] });
  const exe = buildServerOptions(s, [A, B]);
  assert.deepEqual(exe, { command: 'python3', args: ['-m', 'ploke_io_server'], options: { cwd: '/home/me/proj' } });
  assert.equal('transport' in exe, false, 'no transport: vscode-languageclient defaults to stdio');
});

test('command and args are concatenated; ${workspaceFolder} is the first folder', () => {
  const s = resolveSettings(
    { command: ['${workspaceFolder}/.venv/bin/python', '-m', 'ploke_io_server'], args: ['--log-level', 'debug'] },
    [A, B],
  );
  assert.deepEqual(s.warnings, []);
  const exe = buildServerOptions(s, [A]);
  assert.equal(exe.command, '/home/me/proj/.venv/bin/python');
  assert.deepEqual(exe.args, ['-m', 'ploke_io_server', '--log-level', 'debug']);
});

test('a single-element command (an installed ploke-io-server) works', () => {
  const exe = buildServerOptions(resolveSettings({ command: ['ploke-io-server'], args: [] }, [A]), [A]);
  assert.equal(exe.command, 'ploke-io-server');
  assert.deepEqual(exe.args, []);
});

test('malformed settings fall back to the defaults with warnings', () => {
  for (const bad of [[], 'python3 -m ploke_io_server', [1, 2], [''], ['  ']]) {
    const s = resolveSettings({ command: bad }, [A]);
    assert.deepEqual(s.command, [...DEFAULT_COMMAND], JSON.stringify(bad));
    assert.equal(s.warnings.length, 1);
    assert.match(s.warnings[0], /ploke\.server\.command/);
  }
  const s = resolveSettings({ args: '--watch' }, [A]);
  assert.deepEqual(s.args, []);
  assert.match(s.warnings[0], /ploke\.server\.args/);
  assert.deepEqual(resolveSettings({ command: null, args: null }, [A]).warnings, []);
});

test('${workspaceFolder} without a folder is left as is, with a warning', () => {
  const s = resolveSettings({ command: ['${workspaceFolder}/py'] }, []);
  assert.deepEqual(s.command, ['${workspaceFolder}/py']);
  assert.equal(s.warnings.length, 1);
  assert.equal(buildServerOptions(s, []).options, undefined);
});

test('client options ask for watch and sync no documents', () => {
  const o = buildClientOptions();
  assert.deepEqual(o.initializationOptions, { watch: true });
  assert.deepEqual(o.documentSelector, []);
  const channel = { name: 'Ploke' } as never;
  assert.equal(buildClientOptions({ outputChannel: channel }).outputChannel, channel);
});

test('initialize params carry every workspace folder and watch: true', () => {
  const p = buildInitializeParams([A, B], 42);
  assert.deepEqual(p, {
    processId: 42,
    rootUri: 'file:///home/me/proj',
    capabilities: {},
    workspaceFolders: [
      { uri: 'file:///home/me/proj', name: 'proj' },
      { uri: 'file:///home/me/lib', name: 'lib' },
    ],
    initializationOptions: { watch: true },
  });
  assert.equal(buildInitializeParams([]).workspaceFolders, null);
});

test('package.json: setting defaults and commands match the code', () => {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  const props = pkg.contributes.configuration.properties;
  assert.deepEqual(props['ploke.server.command'].default, [...DEFAULT_COMMAND]);
  assert.deepEqual(props['ploke.server.args'].default, []);
  const contributed = pkg.contributes.commands.map((c: { command: string }) => c.command).sort();
  assert.deepEqual(contributed, ['ploke.scanWorkspace', 'ploke.showServerLog', 'ploke.showStatus']);
  const ext = readFileSync(join(ROOT, 'out', 'extension.js'), 'utf8');
  const registered = [...ext.matchAll(/registerCommand\('([^']+)'/g)].map((m) => m[1]).sort();
  assert.deepEqual(registered, contributed);
  assert.equal(pkg.main, './out/extension.js');
});
