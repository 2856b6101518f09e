import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_RECORD_BYTES, decodeAck, decodeHello, decodeRequest, encodeAck, encodeHello, encodeRequest } from './codec.js';
import { ZdsProtocolError } from './errors.js';

// Anything the decoders return must be valid; anything they throw must be a ZdsProtocolError.
function outcome(fn: () => unknown): 'ok' | 'rejected' {
  try {
    fn();
    return 'ok';
  } catch (err) {
    if (err instanceof ZdsProtocolError) return 'rejected';
    throw err;
  }
}

const text = fc.string({ unit: 'grapheme', maxLength: 40 });
const validRequest = fc.oneof(
  fc.record({
    kind: fc.constant('add' as const),
    uid: text,
    workloadInfo: fc.record({ name: text, namespace: text, serviceAccount: text }),
  }),
  fc.record({ kind: fc.constant('keep' as const), uid: text }),
  fc.record({ kind: fc.constant('del' as const), uid: text }),
  fc.record({ kind: fc.constant('snapshotSent' as const) }),
);

// Valid records with bytes flipped, cut off or appended: close to the real thing, so they reach
// deep into the decoder rather than failing at the first byte.
const valid = fc.oneof(validRequest.map(encodeRequest), text.map((e) => encodeAck(e)), fc.constant(encodeHello()));
const mutated = fc
  .tuple(
    valid,
    fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
    fc.nat(),
    fc.uint8Array({ maxLength: 8 }),
  )
  .map(([bytes, flips, cut, tail]) => {
    const b = Uint8Array.from(bytes);
    for (const [i, v] of flips) if (b.length > 0) b[i % b.length] = v;
    const kept = b.subarray(0, b.length === 0 ? 0 : cut % (b.length + 1));
    return Uint8Array.from([...kept, ...tail]);
  });

const records = fc.oneof(fc.uint8Array({ maxLength: MAX_RECORD_BYTES + 64 }), mutated, valid);
const fdCount = fc.integer({ min: 0, max: 3 });

describe('decoders under random records', () => {
  it('decodeRequest never throws anything but ZdsProtocolError (12,000 records)', () => {
    let ok = 0;
    fc.assert(
      fc.property(records, fdCount, (data, fds) => {
        if (outcome(() => decodeRequest(data, fds)) === 'ok') {
          ok++;
          const req = decodeRequest(data, fds);
          expect(decodeRequest(encodeRequest(req), fds)).toEqual(req);
        }
      }),
      { numRuns: 12_000 },
    );
    // the valid and mutated arms must produce accepted records, or it tests nothing deep
    expect(ok).toBeGreaterThan(100);
  });

  it('decodeAck and decodeHello never throw anything but ZdsProtocolError (10,000 records each)', () => {
    fc.assert(
      fc.property(records, fdCount, (data, fds) => {
        outcome(() => decodeAck(data, fds));
        outcome(() => decodeHello(data, fds));
      }),
      { numRuns: 10_000 },
    );
  });

  it('every valid request round-trips', () => {
    fc.assert(
      fc.property(validRequest.filter((r) => r.kind === 'snapshotSent' || r.uid !== ''), (req) => {
        expect(decodeRequest(encodeRequest(req), req.kind === 'add' ? 1 : 0)).toEqual(req);
      }),
      { numRuns: 2_000 },
    );
  });
});
