import { describe, expect, it } from 'vitest';
import * as core from './core.js';
import * as index from './index.js';

// index.ts repeats core.ts's list (explicit named exports, no `export *`): this keeps the two in step.
describe('entry points', () => {
  it('@weir/ztunnel exports everything @weir/ztunnel/core does, plus only the istiod clients and the test control plane', () => {
    const coreNames = Object.keys(core).sort();
    const indexNames = Object.keys(index).sort();
    expect(coreNames.filter((n) => !indexNames.includes(n))).toEqual([]);
    expect(indexNames.filter((n) => !coreNames.includes(n))).toEqual(
      ['ADDRESS_TYPE', 'AUTHORIZATION_TYPE', 'CaClient', 'TestControlPlane', 'XdsClient', 'ipBytes', 'policyToXds', 'serviceToXds', 'workloadToXds'].sort(),
    );
    for (const n of coreNames) expect(index[n as keyof typeof index], n).toBe(core[n as keyof typeof core]);
  });
});
