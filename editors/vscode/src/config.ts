// Pure builders for the language client: no `vscode` import at run time, so the unit tests
// (and the real-server test) can use them under plain node.
import type { Executable, LanguageClientOptions } from 'vscode-languageclient/node';

export const DEFAULT_COMMAND: readonly string[] = ['python3', '-m', 'ploke_io_server'];

/** The `ploke.server.*` settings as read from the configuration (values not yet checked). */
export interface RawSettings {
  command?: unknown;
  args?: unknown;
}

/** A workspace folder as the server's `initialize` needs it. */
export interface Folder {
  /** A `file:` URI string. */
  uri: string;
  name: string;
  /** The local path of `uri` (`Uri.fsPath`), used for `${workspaceFolder}` and the cwd. */
  fsPath: string;
}

export interface ResolvedSettings {
  command: string[];
  args: string[];
  /** Problems found in the settings; the defaults were used instead. */
  warnings: string[];
}

/** The options every session sends: watch on, so that ploke/didChangeFiles is delivered. */
export function initializationOptions(): { watch: true } {
  return { watch: true };
}

function isStringArray(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((x) => typeof x === 'string');
}

/**
 * Checks the settings and substitutes `${workspaceFolder}` (the first folder). A malformed
 * `command` (not a non-empty array of strings, or an empty program) falls back to
 * DEFAULT_COMMAND; a malformed `args` to `[]`; each with a warning.
 */
export function resolveSettings(raw: RawSettings, folders: readonly Folder[]): ResolvedSettings {
  const warnings: string[] = [];
  let command: string[] = [...DEFAULT_COMMAND];
  if (raw.command !== undefined && raw.command !== null) {
    if (isStringArray(raw.command) && raw.command.length > 0 && raw.command[0].trim() !== '') {
      command = [...raw.command];
    } else {
      warnings.push(
        `ploke.server.command must be a non-empty array of strings; using ${JSON.stringify(DEFAULT_COMMAND)}`,
      );
    }
  }
  let args: string[] = [];
  if (raw.args !== undefined && raw.args !== null) {
    if (isStringArray(raw.args)) {
      args = [...raw.args];
    } else {
      warnings.push('ploke.server.args must be an array of strings; ignoring it');
    }
  }
  const first = folders[0]?.fsPath;
  const subst = (s: string): string => {
    if (!s.includes('${workspaceFolder}')) {
      return s;
    }
    if (first === undefined) {
      warnings.push(`'${s}' uses \${workspaceFolder} but no folder is open`);
      return s;
    }
    return s.split('${workspaceFolder}').join(first);
  };
  return { command: command.map(subst), args: args.map(subst), warnings };
}

/**
 * The ServerOptions for vscode-languageclient: an Executable over stdio (no `transport`
 * means stdio). The cwd is the first workspace folder, if any.
 */
export function buildServerOptions(settings: ResolvedSettings, folders: readonly Folder[]): Executable {
  const [program, ...rest] = settings.command;
  const exe: Executable = { command: program, args: [...rest, ...settings.args] };
  if (folders.length > 0) {
    exe.options = { cwd: folders[0].fsPath };
  }
  return exe;
}

/**
 * The LanguageClientOptions. No document selector: the server syncs no documents. The
 * client itself sends the workspace folders in `initialize`.
 */
export function buildClientOptions(
  extra: Pick<LanguageClientOptions, 'outputChannel'> = {},
): LanguageClientOptions {
  return {
    documentSelector: [],
    initializationOptions: initializationOptions(),
    ...extra,
  };
}

/**
 * The `initialize` params that vscode-languageclient sends for these folders, reduced to
 * what the server reads. Used by the test that talks to the real server, and as the
 * documentation of what the extension sends.
 */
export function buildInitializeParams(folders: readonly Folder[], processId: number | null = null) {
  return {
    processId,
    rootUri: folders.length > 0 ? folders[0].uri : null,
    capabilities: {},
    workspaceFolders: folders.length > 0 ? folders.map((f) => ({ uri: f.uri, name: f.name })) : null,
    initializationOptions: initializationOptions(),
  };
}
