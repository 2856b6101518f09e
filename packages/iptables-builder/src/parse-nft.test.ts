import { describe, expect, it } from 'vitest';

import { parseNftListing } from './parse-nft.js';

describe('parseNftListing', () => {
  it('reads chains and the weir tag of each rule, keeping untagged rules', () => {
    const listing = [
      'table inet istio-ambient-nat {',
      '\tchain output {',
      '\t\ttype nat hook output priority -100; policy accept;',
      '\t\tjump istio-output comment "weir:0123456789ab"',
      '\t}',
      '',
      '\tchain istio-output {',
      '\t\tmeta l4proto tcp counter packets 3 bytes 180 redirect to :15001 comment "weir:ba9876543210"',
      '\t\ttcp dport 22 accept',
      '\t}',
      '}',
    ].join('\n');
    expect(parseNftListing(listing)).toEqual([
      { name: 'output', rules: [{ tag: 'weir:0123456789ab', text: 'jump istio-output comment "weir:0123456789ab"' }] },
      {
        name: 'istio-output',
        rules: [
          { tag: 'weir:ba9876543210', text: 'meta l4proto tcp counter redirect to :15001 comment "weir:ba9876543210"' },
          { tag: undefined, text: 'tcp dport 22 accept' },
        ],
      },
    ]);
  });
});
