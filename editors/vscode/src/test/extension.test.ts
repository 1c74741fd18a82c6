// Loads the compiled extension.js under plain node with stand-ins for the `vscode` module and
// for vscode-languageclient's LanguageClient, to check the wiring of activate(): what the
// client is built with, the commands, the output channels. The real VS Code is not involved.
/* eslint-disable @typescript-eslint/no-explicit-any */
import assert from 'node:assert/strict';
import Module from 'node:module';
import { join } from 'node:path';
import { test } from 'node:test';

interface Channel {
  name: string;
  lines: string[];
  shown: boolean;
  appendLine(line: string): void;
  show(): void;
  dispose(): void;
}

function fakeWorld(folders: string[], responder: (method: string, params: any) => unknown) {
  const channels = new Map<string, Channel>();
  const commands = new Map<string, (...args: unknown[]) => unknown>();
  const messages: { info: string[]; warning: string[]; error: string[] } = { info: [], warning: [], error: [] };
  const clients: any[] = [];
  const files: string[] = [];
  const uri = (p: string) => ({ scheme: 'file', fsPath: p, toString: () => `file://${p}` });
  const config: Record<string, Record<string, unknown>> = {
    'ploke.server': { command: ['py', '-m', 'ploke_io_server'], args: ['--log-level', 'debug'] },
    'ploke.scan': { exclude: '' },
  };
  const vscode = {
    window: {
      createOutputChannel: (name: string): Channel => {
        const ch: Channel = {
          name,
          lines: [],
          shown: false,
          appendLine(l) { this.lines.push(l); },
          show() { this.shown = true; },
          dispose() {},
        };
        channels.set(name, ch);
        return ch;
      },
      showInformationMessage: async (m: string) => void messages.info.push(m),
      showWarningMessage: async (m: string) => void messages.warning.push(m),
      showErrorMessage: async (m: string) => void messages.error.push(m),
      withProgress: (_opts: unknown, fn: (p: unknown) => Promise<unknown>) => fn({ report() {} }),
    },
    workspace: {
      workspaceFolders: folders.map((p) => ({ uri: uri(p), name: p.split('/').pop() })),
      getConfiguration: (section: string) => ({ get: (key: string) => config[section]?.[key] }),
      findFiles: async () => files.map(uri),
      onDidChangeWorkspaceFolders: () => ({ dispose() {} }),
      onDidChangeConfiguration: () => ({ dispose() {} }),
    },
    commands: {
      registerCommand: (id: string, fn: (...args: unknown[]) => unknown) => {
        commands.set(id, fn);
        return { dispose() {} };
      },
    },
    ProgressLocation: { Notification: 15 },
  };
  class LanguageClient {
    handlers = new Map<string, (p: unknown) => void>();
    requests: [string, unknown][] = [];
    started = false;
    stopped = false;
    constructor(public id: string, public name: string, public serverOptions: any, public clientOptions: any) {
      clients.push(this);
    }
    onNotification(method: string, h: (p: unknown) => void) { this.handlers.set(method, h); return { dispose() {} }; }
    async start() { this.started = true; }
    async stop() { this.stopped = true; }
    async sendRequest(method: string, params: unknown) { this.requests.push([method, params]); return responder(method, params); }
  }
  return { vscode, languageclient: { LanguageClient }, channels, commands, messages, clients, files };
}

/** require() the compiled extension with the fakes in place of its two external modules. */
function loadExtension(world: ReturnType<typeof fakeWorld>): any {
  const M = Module as any;
  const original = M._load;
  M._load = function (request: string, ...rest: unknown[]) {
    if (request === 'vscode') return world.vscode;
    if (request === 'vscode-languageclient/node') return world.languageclient;
    return original.call(this, request, ...rest);
  };
  try {
    const path = require.resolve(join(__dirname, '..', 'extension.js'));
    delete require.cache[path];
    return require(path);
  } finally {
    M._load = original;
  }
}

const flush = () => new Promise((r) => setImmediate(r));

test('activate: starts one client with the settings, watch on, and the Ploke channel', async () => {
  const world = fakeWorld(['/w'], () => null);
  const ext = loadExtension(world);
  const context = { subscriptions: [] as unknown[] };
  ext.activate(context);
  await flush();
  assert.equal(world.clients.length, 1);
  const c = world.clients[0];
  assert.equal(c.started, true);
  assert.deepEqual(c.serverOptions, {
    command: 'py',
    args: ['-m', 'ploke_io_server', '--log-level', 'debug'],
    options: { cwd: '/w' },
  });
  assert.deepEqual(c.clientOptions.initializationOptions, { watch: true });
  assert.equal(c.clientOptions.outputChannel, world.channels.get('Ploke'));
  assert.deepEqual([...world.channels.keys()].sort(), ['Ploke', 'Ploke changes']);
  assert.deepEqual([...world.commands.keys()].sort(), ['ploke.scanWorkspace', 'ploke.showServerLog', 'ploke.showStatus']);
  await ext.deactivate();
  assert.equal(c.stopped, true);
});

test('didChangeFiles notifications go to "Ploke changes", one time-stamped line per event', async () => {
  const world = fakeWorld(['/w'], () => null);
  const ext = loadExtension(world);
  ext.activate({ subscriptions: [] });
  await flush();
  world.clients[0].handlers.get('ploke/didChangeFiles')({
    events: [
      { filePath: '/w/a', kind: 'created', fileHash: 'x' },
      { filePath: '/w/b', kind: 'renamed', oldPath: '/w/c', origin: 'agent' },
    ],
  });
  const lines = world.channels.get('Ploke changes')!.lines;
  assert.equal(lines.length, 2);
  assert.match(lines[0], /^\d\d:\d\d:\d\d\.\d{3} created {2}\/w\/a$/);
  assert.match(lines[1], /^\d\d:\d\d:\d\d\.\d{3} renamed {2}\/w\/b \(from \/w\/c\) \[origin: agent\]$/);
  await ext.deactivate();
});

test('commands: Show Status, Scan Workspace (twice), Show Server Log', async () => {
  const world = fakeWorld(['/w'], (method, params) => {
    if (method === 'ploke/status') return { version: '0.1.0', roots: ['/w'], watcher: { enabled: true }, counters: {} };
    if (method === 'ploke/hashFiles') return { results: params.paths.map(() => ({ ok: true, fileHash: 'h', size: 1 })) };
    if (method === 'ploke/scanChanges') return { results: params.files.map(() => ({ status: 'unchanged' })) };
    throw new Error(method);
  });
  world.files.push('/w/a', '/w/b');
  const ext = loadExtension(world);
  ext.activate({ subscriptions: [] });
  const log = world.channels.get('Ploke')!;

  await world.commands.get('ploke.showStatus')!();
  assert.deepEqual(world.messages.info, ['ploke-io-server 0.1.0, root /w, watching, 0 requests']);
  assert.ok(log.lines.some((l) => l.startsWith('ploke/status: {')));

  await world.commands.get('ploke.scanWorkspace')!();
  await world.commands.get('ploke.scanWorkspace')!();
  assert.deepEqual(world.messages.info.slice(1), [
    'Ploke: hashed 2 files; run Scan Workspace again to see what changed',
    'Ploke: 2 unchanged, 0 modified, 0 removed',
  ]);
  assert.deepEqual(
    world.clients[0].requests.map(([m]: [string]) => m),
    ['ploke/status', 'ploke/hashFiles', 'ploke/scanChanges'],
  );
  assert.deepEqual(world.clients[0].requests[0][1], {});

  await world.commands.get('ploke.showServerLog')!();
  assert.equal(log.shown, true);
  assert.deepEqual(world.messages.error, []);
  await ext.deactivate();
});

test('a failing request is reported as an error message, not thrown', async () => {
  const world = fakeWorld(['/w'], () => {
    throw new Error('connection lost');
  });
  const ext = loadExtension(world);
  ext.activate({ subscriptions: [] });
  await world.commands.get('ploke.showStatus')!();
  assert.deepEqual(world.messages.error, ['Ploke: Show Status failed: Error: connection lost']);
  await ext.deactivate();
});

test('no folder open: the server is not started and commands say so', async () => {
  const world = fakeWorld([], () => null);
  const ext = loadExtension(world);
  ext.activate({ subscriptions: [] });
  await world.commands.get('ploke.showStatus')!();
  assert.equal(world.clients.length, 0);
  assert.equal(world.messages.warning.length, 1);
  assert.match(world.messages.warning[0], /not running/);
  await ext.deactivate();
});
