import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, textLine } from './logger.js';

describe('logger', () => {
  it('prints ztunnel-shaped text lines by default', async () => {
    const out = new PassThrough();
    const chunks: string[] = [];
    out.on('data', (c: Buffer) => chunks.push(c.toString()));
    const log = createLogger({ format: 'text', level: 'info' }, out);
    log.child({ scope: 'inpod' }).info({ uid: 'u-1', name: 'web 0' }, 'pod captured');
    log.debug({}, 'hidden');
    await new Promise((r) => setImmediate(r));
    expect(chunks.join('')).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z {2}INFO inpod: pod captured uid=u-1 name="web 0"\n$/);
  });

  it('keeps unparseable input as it is', () => {
    expect(textLine('not json')).toBe('not json');
  });
});
