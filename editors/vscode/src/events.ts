// Formatting of ploke/didChangeFiles notifications for the "Ploke changes" output channel.

export const DID_CHANGE_FILES = 'ploke/didChangeFiles';

export interface ChangeEvent {
  filePath: string;
  kind: 'created' | 'modified' | 'removed' | 'renamed' | string;
  oldPath?: string;
  fileHash?: string;
  origin?: string;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

/**
 * One line for one event: `KIND PATH`, then ` (from OLDPATH)` for a rename and
 * ` [origin: ORIGIN]` for a write through the daemon. The kind is padded so paths line up.
 * A malformed event is shown as JSON rather than dropped.
 */
export function formatChangeEvent(ev: unknown): string {
  if (typeof ev !== 'object' || ev === null) {
    return `? ${JSON.stringify(ev)}`;
  }
  const e = ev as Record<string, unknown>;
  const kind = str(e.kind);
  const filePath = str(e.filePath);
  if (kind === undefined || filePath === undefined) {
    return `? ${JSON.stringify(ev)}`;
  }
  let line = `${kind.padEnd(8)} ${filePath}`;
  const oldPath = str(e.oldPath);
  if (oldPath !== undefined) {
    line += ` (from ${oldPath})`;
  }
  const origin = str(e.origin);
  if (origin !== undefined) {
    line += ` [origin: ${origin}]`;
  }
  return line;
}

/** The lines of one notification, in the order of its events (which carries no meaning). */
export function formatDidChangeFiles(params: unknown): string[] {
  const events = (params as { events?: unknown } | null | undefined)?.events;
  if (!Array.isArray(events)) {
    return [`? malformed ${DID_CHANGE_FILES}: ${JSON.stringify(params)}`];
  }
  return events.map(formatChangeEvent);
}

/** A time stamp prefix `HH:MM:SS.mmm` (local time) for the output channel. */
export function timestamp(d: Date): string {
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}
