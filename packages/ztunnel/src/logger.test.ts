import { describe, expect, it } from 'vitest';
import { createLogger, formatTextLine } from './logger.js';

describe('createLogger', () => {
  it('writes ztunnel-shaped text lines', () => {
    const lines: string[] = [];
    const { logger } = createLogger({ write: (l) => lines.push(l) });
    logger.child({ component: 'inpod' }).info({ uid: 'u1', name: 'a b' }, 'pod WorkloadUid("u1") received netns, starting proxy');
    expect(lines[0]).toMatch(
      /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z {2}INFO inpod: pod WorkloadUid\("u1"\) received netns, starting proxy uid=u1 name="a b"\n$/,
    );
  });

  it('writes JSON with LOG_FORMAT=json and changes level of existing children', () => {
    const lines: string[] = [];
    const control = createLogger({ format: 'json', write: (l) => lines.push(l) });
    const child = control.logger.child({ component: 'proxy' });
    child.debug({}, 'hidden');
    control.setLevel('debug');
    child.debug({ x: 1 }, 'shown');
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 'debug', component: 'proxy', x: 1, msg: 'shown' });
    expect(control.level).toBe('debug');
  });

  it('renders errors by message', () => {
    expect(formatTextLine({ level: 50, time: 0, msg: 'boom', err: { type: 'Error', message: 'bad thing', stack: 's' } })).toBe(
      '1970-01-01T00:00:00.000000Z ERROR boom err="bad thing"\n',
    );
  });
});
