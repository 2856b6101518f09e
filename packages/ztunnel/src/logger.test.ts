import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { setTimeout as sleep } from 'node:timers/promises';
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

  it('forgets children once they are collected (a long-running ztunnel makes several per pod)', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const control = createLogger({ write: () => {} });
    for (let i = 0; i < 2000; i++) control.logger.child({ component: 'inpod', uid: `u${i}` }).info({}, 'made');
    const kept = control.logger.child({ component: 'kept' });
    for (let i = 0; i < 100 && control.childCount > 1; i++) {
      gc();
      await sleep(10);
    }
    expect(control.childCount).toBe(1);
    control.setLevel('debug');
    expect(kept.isLevelEnabled?.('debug')).toBe(true);
  });

  it('renders errors by message', () => {
    expect(formatTextLine({ level: 50, time: 0, msg: 'boom', err: { type: 'Error', message: 'bad thing', stack: 's' } })).toBe(
      '1970-01-01T00:00:00.000000Z ERROR boom err="bad thing"\n',
    );
  });
});
