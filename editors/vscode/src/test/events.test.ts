import assert from 'node:assert/strict';
import { test } from 'node:test';

import { formatChangeEvent, formatDidChangeFiles, timestamp } from '../events';

test('one line per event: kind, path, oldPath, origin', () => {
  // The example notification of docs/protocol.md.
  const lines = formatDidChangeFiles({
    events: [
      { filePath: '/home/me/proj/src/lib.rs', kind: 'created', fileHash: '290b' },
      { filePath: '/home/me/proj/src/util/text.rs', kind: 'renamed', oldPath: '/home/me/proj/src/util/strings.rs', fileHash: '7941' },
      { filePath: '/home/me/proj/logo.bin', kind: 'removed' },
      { filePath: '/home/me/proj/README.md', kind: 'modified', fileHash: '42d4' },
      { filePath: '/home/me/proj/src/main.rs', kind: 'modified', fileHash: 'dfc6', origin: 'agent-2' },
    ],
  });
  assert.deepEqual(lines, [
    'created  /home/me/proj/src/lib.rs',
    'renamed  /home/me/proj/src/util/text.rs (from /home/me/proj/src/util/strings.rs)',
    'removed  /home/me/proj/logo.bin',
    'modified /home/me/proj/README.md',
    'modified /home/me/proj/src/main.rs [origin: agent-2]',
  ]);
});

test('an empty notification gives no line', () => {
  assert.deepEqual(formatDidChangeFiles({ events: [] }), []);
});

test('malformed notifications and events are shown, not dropped or thrown', () => {
  assert.deepEqual(formatDidChangeFiles(null), ['? malformed ploke/didChangeFiles: null']);
  assert.deepEqual(formatDidChangeFiles({ events: 3 }), ['? malformed ploke/didChangeFiles: {"events":3}']);
  assert.equal(formatChangeEvent('x'), '? "x"');
  assert.equal(formatChangeEvent({ kind: 'created' }), '? {"kind":"created"}');
  assert.equal(formatChangeEvent({ kind: 'created', filePath: '/a', oldPath: 5 }), 'created  /a');
  assert.equal(formatChangeEvent({ kind: 'touched', filePath: '/a' }), 'touched  /a');
});

test('timestamp is HH:MM:SS.mmm', () => {
  assert.equal(timestamp(new Date(2024, 0, 2, 3, 4, 5, 6)), '03:04:05.006');
});
