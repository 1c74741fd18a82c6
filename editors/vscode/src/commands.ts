// Command handlers, free of `vscode`: they take an injected `sendRequest` and output sink,
// so the tests drive them with a fake or with a real server over vscode-jsonrpc.

/**
 * `params` is always an object: vscode-jsonrpc (under vscode-languageclient) sends a `null`
 * or `undefined` single parameter as the array `[null]`. The server now takes that as no
 * params, but servers before 2026-11-29 refused it (-32602), and an object is clearer.
 */
export type SendRequest = (method: string, params: object) => Promise<unknown>;

export interface Sink {
  /** A short message for the user (an information message in VS Code). */
  info(message: string): void;
  /** A line for the server log output channel. */
  log(line: string): void;
}

/** Items per request; the server's default `--max-batch-items` is 100,000. */
export const DEFAULT_CHUNK = 10_000;

// ---------------------------------------------------------------- Ploke: Show Status

function obj(v: unknown): Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

function sumValues(v: unknown): number {
  return Object.values(obj(v)).reduce<number>((a, x) => a + (typeof x === 'number' ? x : 0), 0);
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** One line about a `ploke/status` result, e.g. for an information message. */
export function summarizeStatus(status: unknown): string {
  const s = obj(status);
  const roots = Array.isArray(s.roots) ? s.roots.filter((r): r is string => typeof r === 'string') : [];
  const watcher = obj(s.watcher);
  const counters = obj(s.counters);
  const parts: string[] = [];
  parts.push(`ploke-io-server ${typeof s.version === 'string' ? s.version : '?'}`);
  parts.push(roots.length === 1 ? `root ${roots[0]}` : plural(roots.length, 'root'));
  if (watcher.enabled === true) {
    const w = obj(counters.watcher);
    let text = 'watching';
    if (typeof w.files === 'number') {
      text += ` ${plural(w.files, 'file')}`;
    }
    if (w.degraded === true) {
      text += ' (degraded: polling)';
    }
    if (Array.isArray(w.errors) && w.errors.length > 0) {
      text += ` (${plural(w.errors.length, 'watcher error')})`;
    }
    parts.push(text);
  } else {
    parts.push('not watching');
  }
  parts.push(plural(sumValues(counters.requests), 'request'));
  const errors = sumValues(counters.errors);
  if (errors > 0) {
    parts.push(plural(errors, 'item error'));
  }
  if (typeof counters.notifications === 'number') {
    parts.push(plural(counters.notifications, 'change notification'));
  }
  return parts.join(', ');
}

/** Ploke: Show Status. Sends `ploke/status`; summary to `info`, full JSON to `log`. */
export async function showStatus(send: SendRequest, sink: Sink): Promise<string> {
  const status = await send('ploke/status', {});
  const summary = summarizeStatus(status);
  sink.log(`ploke/status: ${JSON.stringify(status, null, 2)}`);
  sink.info(summary);
  return summary;
}

// ---------------------------------------------------------------- Ploke: Scan Workspace

export interface ScanReport {
  /** True for the first scan, which only hashes. */
  firstRun: boolean;
  /** Files hashed by ploke/hashFiles (all of them on the first run, the new ones later). */
  hashed: number;
  unchanged: number;
  modified: number;
  removed: number;
  /** Files found now that the previous scans did not know (included in `hashed`). */
  added: number;
  /** Item errors of either method (the file is left as it was known). */
  errors: number;
  /** The first few item errors, `path: message`. */
  errorSamples: string[];
  /** Files whose hash is now known. */
  known: number;
}

interface ItemError {
  kind?: string;
  message?: string;
}

function results(reply: unknown, expected: number, method: string): unknown[] {
  const r = obj(reply).results;
  if (!Array.isArray(r) || r.length !== expected) {
    throw new Error(`${method}: expected ${expected} results, got ${JSON.stringify(reply)?.slice(0, 200)}`);
  }
  return r;
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) {
    out.push(items.slice(i, i + size));
  }
  return out;
}

/**
 * Keeps the hashes of the last scan in memory. The first `scan` hashes every file
 * (`ploke/hashFiles`); each later one sends the known hashes to `ploke/scanChanges`,
 * updates them, and hashes the files it had not seen.
 */
export class WorkspaceScanner {
  private readonly hashes = new Map<string, string>();
  private scanned = false;

  constructor(
    private readonly send: SendRequest,
    private readonly chunkSize: number = DEFAULT_CHUNK,
  ) {}

  get knownFiles(): number {
    return this.hashes.size;
  }

  /** Forget every hash: the next scan is a first run again (e.g. after a server restart). */
  reset(): void {
    this.hashes.clear();
    this.scanned = false;
  }

  /** `paths`: absolute paths of the workspace's files, as found now. */
  async scan(paths: readonly string[]): Promise<ScanReport> {
    const report: ScanReport = {
      firstRun: !this.scanned,
      hashed: 0,
      unchanged: 0,
      modified: 0,
      removed: 0,
      added: 0,
      errors: 0,
      errorSamples: [],
      known: 0,
    };
    const noteError = (path: string, err: unknown) => {
      report.errors++;
      if (report.errorSamples.length < 5) {
        const e = obj(err) as ItemError;
        report.errorSamples.push(`${path}: ${e.kind ?? 'error'}: ${e.message ?? JSON.stringify(err)}`);
      }
    };

    if (this.scanned) {
      const known = [...this.hashes.entries()];
      for (const part of chunks(known, this.chunkSize)) {
        const files = part.map(([filePath, fileHash]) => ({ filePath, fileHash }));
        const reply = await this.send('ploke/scanChanges', { files });
        results(reply, files.length, 'ploke/scanChanges').forEach((item, i) => {
          const it = obj(item);
          const path = part[i][0];
          switch (it.status) {
            case 'unchanged':
              report.unchanged++;
              break;
            case 'modified':
              report.modified++;
              if (typeof it.newHash === 'string') {
                this.hashes.set(path, it.newHash);
              }
              break;
            case 'removed':
              report.removed++;
              this.hashes.delete(path);
              break;
            default:
              noteError(path, it.error ?? item);
          }
        });
      }
    }

    const wasKnown = new Set(this.hashes.keys());
    const fresh = [...new Set(paths)].filter((p) => !wasKnown.has(p));
    for (const part of chunks(fresh, this.chunkSize)) {
      const reply = await this.send('ploke/hashFiles', { paths: part });
      results(reply, part.length, 'ploke/hashFiles').forEach((item, i) => {
        const it = obj(item);
        if (it.ok === true && typeof it.fileHash === 'string') {
          this.hashes.set(part[i], it.fileHash);
          report.hashed++;
          if (this.scanned) {
            report.added++;
          }
        } else {
          noteError(part[i], it.error ?? item);
        }
      });
    }
    this.scanned = true;
    report.known = this.hashes.size;
    return report;
  }
}

/** One line for the user about a scan. */
export function formatScanReport(r: ScanReport): string {
  let text: string;
  if (r.firstRun) {
    text = `Ploke: hashed ${plural(r.hashed, 'file')}; run Scan Workspace again to see what changed`;
  } else {
    text =
      `Ploke: ${r.unchanged} unchanged, ${r.modified} modified, ${r.removed} removed` +
      (r.added > 0 ? `, ${r.added} new` : '');
  }
  if (r.errors > 0) {
    text += ` (${plural(r.errors, 'error')}, see the server log)`;
  }
  return text;
}
