// The VS Code wiring. Everything that can be tested without VS Code lives in config.ts,
// events.ts and commands.ts; this file only connects them to the vscode API.
import * as vscode from 'vscode';
import { LanguageClient } from 'vscode-languageclient/node';

import { formatScanReport, showStatus, Sink, WorkspaceScanner } from './commands';
import { buildClientOptions, buildServerOptions, Folder, resolveSettings } from './config';
import { DID_CHANGE_FILES, formatDidChangeFiles, timestamp } from './events';

let client: LanguageClient | undefined;
let starting: Promise<LanguageClient | undefined> | undefined;

function workspaceFolders(): Folder[] {
  return (vscode.workspace.workspaceFolders ?? [])
    .filter((f) => f.uri.scheme === 'file')
    .map((f) => ({ uri: f.uri.toString(), name: f.name, fsPath: f.uri.fsPath }));
}

export function activate(context: vscode.ExtensionContext): void {
  const log = vscode.window.createOutputChannel('Ploke');
  const changes = vscode.window.createOutputChannel('Ploke changes');
  context.subscriptions.push(log, changes);

  const sink: Sink = {
    info: (message) => void vscode.window.showInformationMessage(message),
    log: (line) => log.appendLine(line),
  };
  const scanner = new WorkspaceScanner((method, params) => {
    if (!client) {
      return Promise.reject(new Error('ploke-io-server is not running'));
    }
    return client.sendRequest<unknown>(method, params);
  });

  async function start(): Promise<LanguageClient | undefined> {
    const folders = workspaceFolders();
    if (folders.length === 0) {
      // Without a folder the server would take its cwd as the root (and watch it): don't.
      log.appendLine('No local workspace folder is open; ploke-io-server is not started.');
      return undefined;
    }
    const cfg = vscode.workspace.getConfiguration('ploke.server');
    const settings = resolveSettings({ command: cfg.get('command'), args: cfg.get('args') }, folders);
    for (const w of settings.warnings) {
      log.appendLine(`warning: ${w}`);
      void vscode.window.showWarningMessage(`Ploke: ${w}`);
    }
    const serverOptions = buildServerOptions(settings, folders);
    log.appendLine(`Starting ${JSON.stringify([serverOptions.command, ...(serverOptions.args ?? [])])}`);
    const c = new LanguageClient('ploke', 'Ploke I/O', serverOptions, buildClientOptions({ outputChannel: log }));
    c.onNotification(DID_CHANGE_FILES, (params: unknown) => {
      const t = timestamp(new Date());
      for (const line of formatDidChangeFiles(params)) {
        changes.appendLine(`${t} ${line}`);
      }
    });
    try {
      await c.start();
    } catch (err) {
      log.appendLine(`ploke-io-server failed to start: ${String(err)}`);
      const pick = await vscode.window.showErrorMessage(
        `Ploke: ploke-io-server failed to start (${String(err)}). Check ploke.server.command.`,
        'Show Server Log',
      );
      if (pick) {
        log.show(true);
      }
      return undefined;
    }
    client = c;
    return c;
  }

  async function stop(): Promise<void> {
    const c = client;
    client = undefined;
    scanner.reset();
    if (c) {
      try {
        await c.stop();
      } catch (err) {
        log.appendLine(`stopping ploke-io-server: ${String(err)}`);
      }
    }
  }

  function restart(reason: string): void {
    log.appendLine(`Restarting ploke-io-server: ${reason}`);
    starting = (starting ?? Promise.resolve(undefined)).then(async () => {
      await stop();
      return start();
    });
  }

  async function running(): Promise<LanguageClient | undefined> {
    await starting;
    if (!client) {
      const pick = await vscode.window.showWarningMessage(
        'Ploke: ploke-io-server is not running (open a folder, or see the server log).',
        'Show Server Log',
      );
      if (pick) {
        log.show(true);
      }
    }
    return client;
  }

  async function guarded(what: string, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      log.appendLine(`${what} failed: ${String(err)}`);
      void vscode.window.showErrorMessage(`Ploke: ${what} failed: ${String(err)}`);
    }
  }

  context.subscriptions.push(
    vscode.commands.registerCommand('ploke.showStatus', () =>
      guarded('Show Status', async () => {
        const c = await running();
        if (c) {
          await showStatus((method, params) => c.sendRequest<unknown>(method, params), sink);
        }
      }),
    ),
    vscode.commands.registerCommand('ploke.scanWorkspace', () =>
      guarded('Scan Workspace', async () => {
        if (!(await running())) {
          return;
        }
        const exclude = vscode.workspace.getConfiguration('ploke.scan').get<string>('exclude') || undefined;
        const report = await vscode.window.withProgress(
          { location: vscode.ProgressLocation.Notification, title: 'Ploke: scanning the workspace' },
          async () => {
            const uris = await vscode.workspace.findFiles('**/*', exclude);
            const paths = uris.filter((u) => u.scheme === 'file').map((u) => u.fsPath);
            return scanner.scan(paths);
          },
        );
        for (const sample of report.errorSamples) {
          log.appendLine(`scan: ${sample}`);
        }
        log.appendLine(`scan: ${JSON.stringify({ ...report, errorSamples: undefined })}`);
        sink.info(formatScanReport(report));
      }),
    ),
    vscode.commands.registerCommand('ploke.showServerLog', () => log.show(true)),
    // The server does not change a session's roots on didChangeWorkspaceFolders: restart.
    vscode.workspace.onDidChangeWorkspaceFolders(() => restart('the workspace folders changed')),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration('ploke.server')) {
        restart('the ploke.server settings changed');
      }
    }),
    { dispose: () => void stop() },
  );

  starting = start();
}

export async function deactivate(): Promise<void> {
  await starting;
  const c = client;
  client = undefined;
  if (c) {
    await c.stop();
  }
}
