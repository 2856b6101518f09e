import { describe, expect, it } from 'vitest';
import { CniPluginError, toCniError } from './errors.js';

describe('toCniError', () => {
  it('says a cause once: details only when the message does not already quote it', () => {
    const cause = new Error("ENOENT: no such file or directory, open '/etc/cni/net.d/weir-kubeconfig'");
    const quoted = new CniPluginError('ERR_CNI_AGENT_UNAVAILABLE', `agent unreachable and pod lookup failed: ${cause.message}`, { cause });
    expect(toCniError(quoted, '1.0.0')).toEqual({ cniVersion: '1.0.0', code: quoted.cniCode, msg: quoted.message });
    const unquoted = new CniPluginError('ERR_CNI_AGENT_UNAVAILABLE', 'agent unreachable and pod lookup failed', { cause });
    expect(toCniError(unquoted, '1.0.0').details).toBe(cause.message);
    const explicit = new CniPluginError('ERR_CNI_AGENT_UNAVAILABLE', 'agent said no', { details: 'pod apps/web not captured' });
    expect(toCniError(explicit, '1.0.0').details).toBe('pod apps/web not captured');
  });

  it('reports anything else as an internal error (code 999)', () => {
    expect(toCniError(new TypeError('boom'), '0.4.0')).toEqual({ cniVersion: '0.4.0', code: 999, msg: 'weir-cni internal error: boom' });
  });
});
