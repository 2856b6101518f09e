import { describe, expect, it } from 'vitest';
import { rng } from '../../test/h2-peer.js';
import { H2ProtocolError } from '../errors.js';
import { HpackDecoder, HpackEncoder, huffmanDecode, huffmanEncode, huffmanLength } from './hpack.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s/g, ''), 'hex');
const pairs = (flat: string[]): [string, string][] => {
  const out: [string, string][] = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i] ?? '', flat[i + 1] ?? '']);
  return out;
};
const flat = (p: [string, string][]): string[] => p.flat();

/** Expects fn to throw an H2ProtocolError with this code and scope; returns it. */
function rejects(fn: () => unknown, h2Code: string, scope: 'connection' | 'stream', message?: RegExp): H2ProtocolError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(H2ProtocolError);
    const e = err as H2ProtocolError;
    expect(e.h2Code).toBe(h2Code);
    expect(e.scope).toBe(scope);
    if (message) expect(e.message).toMatch(message);
    return e;
  }
  throw new Error('expected an H2ProtocolError, nothing was thrown');
}

// RFC 7541 Appendix C: each group shares one decoder; size is the dynamic table size after the block.
const REQUESTS = (blocks: string[]): { hex: string; size: number; headers: [string, string][] }[] => [
  { hex: blocks[0] ?? '', size: 57, headers: [[':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'www.example.com']] },
  { hex: blocks[1] ?? '', size: 110, headers: [[':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'www.example.com'], ['cache-control', 'no-cache']] },
  {
    hex: blocks[2] ?? '',
    size: 164,
    headers: [[':method', 'GET'], [':scheme', 'https'], [':path', '/index.html'], [':authority', 'www.example.com'], ['custom-key', 'custom-value']],
  },
];
const RESPONSE_1: [string, string][] = [[':status', '302'], ['cache-control', 'private'], ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'], ['location', 'https://www.example.com']];
const RESPONSE_2: [string, string][] = [[':status', '307'], ['cache-control', 'private'], ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'], ['location', 'https://www.example.com']];
const RESPONSE_3: [string, string][] = [
  [':status', '200'],
  ['cache-control', 'private'],
  ['date', 'Mon, 21 Oct 2013 20:13:22 GMT'],
  ['location', 'https://www.example.com'],
  ['content-encoding', 'gzip'],
  ['set-cookie', 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1'],
];
const RESPONSES = (blocks: string[]): { hex: string; size: number; headers: [string, string][] }[] => [
  { hex: blocks[0] ?? '', size: 222, headers: RESPONSE_1 },
  { hex: blocks[1] ?? '', size: 222, headers: RESPONSE_2 },
  { hex: blocks[2] ?? '', size: 215, headers: RESPONSE_3 },
];
const C = {
  'C.3 requests without Huffman': {
    tableSize: 4096,
    blocks: REQUESTS(['828684410f7777772e6578616d706c652e636f6d', '828684be58086e6f2d6361636865', '828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565']),
  },
  'C.4 requests with Huffman': {
    tableSize: 4096,
    blocks: REQUESTS(['828684418cf1e3c2e5f23a6ba0ab90f4ff', '828684be5886a8eb10649cbf', '828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf']),
  },
  'C.5 responses without Huffman (table 256)': {
    tableSize: 256,
    blocks: RESPONSES([
      '4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d',
      '4803333037c1c0bf',
      '88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b2076657273696f6e3d31',
    ]),
  },
  'C.6 responses with Huffman (table 256)': {
    tableSize: 256,
    blocks: RESPONSES([
      '488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3',
      '4883640effc1c0bf',
      '88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007',
    ]),
  },
};

describe('HPACK decoder: RFC 7541 Appendix C', () => {
  it('C.2 single fields: literal with indexing, without indexing, never indexed, indexed', () => {
    const cases: [string, [string, string][], number][] = [
      ['400a637573746f6d2d6b65790d637573746f6d2d686561646572', [['custom-key', 'custom-header']], 55],
      ['040c2f73616d706c652f70617468', [[':path', '/sample/path']], 0],
      ['100870617373776f726406736563726574', [['password', 'secret']], 0],
      ['82', [[':method', 'GET']], 0],
    ];
    for (const [block, headers, size] of cases) {
      const d = new HpackDecoder();
      expect(pairs(d.decode(hex(block), 1))).toEqual(headers);
      expect(d.tableSize).toBe(size);
    }
  });

  for (const [name, { tableSize, blocks }] of Object.entries(C)) {
    it(name, () => {
      const d = new HpackDecoder({ maxTableSize: tableSize });
      for (const b of blocks) {
        expect(pairs(d.decode(hex(b.hex), 1))).toEqual(b.headers);
        expect(d.tableSize).toBe(b.size);
      }
    });
  }

  it('C.5/C.6 evict: the 256-byte table holds 4, 4 then 3 entries', () => {
    const d = new HpackDecoder({ maxTableSize: 256 });
    const lengths = C['C.6 responses with Huffman (table 256)'].blocks.map((b) => {
      d.decode(hex(b.hex), 1);
      return d.tableLength;
    });
    expect(lengths).toEqual([4, 4, 3]);
  });

  it('C.4 Huffman strings decode on their own', () => {
    expect(huffmanDecode(hex('f1e3c2e5f23a6ba0ab90f4ff'), 0, 12)).toBe('www.example.com');
    expect(huffmanDecode(hex('a8eb10649cbf'), 0, 6)).toBe('no-cache');
    expect(huffmanDecode(hex('25a849e95bb8e8b4bf'), 0, 9)).toBe('custom-value');
  });
});

describe('HPACK Huffman', () => {
  it('round-trips every symbol, alone and in random strings', () => {
    const out = Buffer.alloc(64);
    for (let c = 0; c < 256; c++) {
      const s = String.fromCharCode(c);
      const n = huffmanEncode(s, out, 0);
      expect(n).toBe(huffmanLength(s));
      expect(huffmanDecode(out, 0, n)).toBe(s);
    }
    const r = rng(7);
    const big = Buffer.alloc(4096);
    for (let i = 0; i < 300; i++) {
      const s = String.fromCharCode(...Array.from({ length: Math.floor(r() * 200) }, () => Math.floor(r() * 256)));
      const n = huffmanEncode(s, big, 0);
      expect(huffmanDecode(big, 0, n)).toBe(s);
    }
  });

  it('rejects EOS, padding over 7 bits, and padding that is not all ones', () => {
    // EOS is 30 ones: four 0xff bytes contain it.
    rejects(() => huffmanDecode(hex('ffffffff'), 0, 4), 'COMPRESSION_ERROR', 'connection', /EOS/);
    // 'a' is 00011 (5 bits); + 0xff = 11 bits of ones padding.
    rejects(() => huffmanDecode(hex('1fff'), 0, 2), 'COMPRESSION_ERROR', 'connection', /padding/);
    // 'a' then padding 000: not a prefix of EOS.
    rejects(() => huffmanDecode(hex('18'), 0, 1), 'COMPRESSION_ERROR', 'connection', /not all ones/);
    // One whole byte of ones is 8 bits of padding.
    rejects(() => huffmanDecode(hex('ff'), 0, 1), 'COMPRESSION_ERROR', 'connection', /8 bits/);
    expect(huffmanDecode(hex('1f'), 0, 1)).toBe('a');
  });
});

describe('HPACK decoder rules', () => {
  it('rejects index 0 and indices past the dynamic table', () => {
    rejects(() => new HpackDecoder().decode(hex('80'), 1), 'COMPRESSION_ERROR', 'connection', /index 0/);
    rejects(() => new HpackDecoder().decode(hex('be'), 1), 'COMPRESSION_ERROR', 'connection', /index 62 .* dynamic table \(0 entries\)/);
    rejects(() => new HpackDecoder().decode(hex('7f00'), 1), 'COMPRESSION_ERROR', 'connection', /index 63/);
  });

  it('guards integers against overflow and truncation', () => {
    // Index with 5 continuation bytes reaching 2^35.
    rejects(() => new HpackDecoder().decode(hex('ffffffffff0f'), 1), 'COMPRESSION_ERROR', 'connection', /2\^31-1/);
    rejects(() => new HpackDecoder().decode(hex('ff80'), 1), 'COMPRESSION_ERROR', 'connection', /inside an integer/);
    // A string length larger than what is left.
    rejects(() => new HpackDecoder().decode(hex('400a6162'), 1), 'COMPRESSION_ERROR', 'connection', /claims 10 bytes, 2 left/);
    rejects(() => new HpackDecoder().decode(hex('40'), 1), 'COMPRESSION_ERROR', 'connection', /before a string literal/);
    // RFC 7541 C.1.2: 1337 with a 5-bit prefix as a table size update (limit raised to allow it).
    const d = new HpackDecoder({ maxTableSize: 2000 });
    expect(d.decode(hex('3f9a0a'), 1)).toEqual([]);
  });

  it('size updates: only at the block start, never above the limit, required after a lowered limit', () => {
    rejects(() => new HpackDecoder().decode(hex('823f e11f'), 1), 'COMPRESSION_ERROR', 'connection', /after a header field/);
    rejects(() => new HpackDecoder({ maxTableSize: 100 }).decode(hex('3f46'), 1), 'COMPRESSION_ERROR', 'connection', /to 101 .* above our limit 100/);
    const d = new HpackDecoder();
    d.decode(hex('400a637573746f6d2d6b65790d637573746f6d2d686561646572'), 1);
    expect(d.tableLength).toBe(1);
    // Two updates in a row at the start are allowed (RFC 7541 §4.2); 0 empties the table.
    expect(d.decode(hex('20 3f e11f 82'), 3)).toEqual([':method', 'GET']);
    expect(d.tableLength).toBe(0);
    d.decode(hex('400a637573746f6d2d6b65790d637573746f6d2d686561646572'), 5);
    d.setMaxTableSize(40);
    rejects(() => d.decode(hex('82'), 7), 'COMPRESSION_ERROR', 'connection', /does not start with a table size update to at most 40/);
    const e = new HpackDecoder();
    e.setMaxTableSize(0);
    rejects(() => e.decode(Buffer.alloc(0), 1), 'COMPRESSION_ERROR', 'connection', /size update/);
    expect(e.decode(hex('20 82'), 1)).toEqual([':method', 'GET']);
    // A raised limit needs no update, and the peer may then use it.
    e.setMaxTableSize(8192);
    expect(e.decode(hex('3fe13f 82'), 3)).toEqual([':method', 'GET']);
  });

  it('evicts oldest first, and an entry larger than the table empties it', () => {
    const d = new HpackDecoder({ maxTableSize: 100 });
    // custom-key: custom-header = 55 bytes; two do not fit in 100.
    d.decode(hex('400a637573746f6d2d6b65790d637573746f6d2d686561646572'), 1);
    d.decode(hex('4001610162'), 3); // a: b = 34
    expect([d.tableLength, d.tableSize]).toEqual([2, 89]);
    expect(d.decode(hex('bebf'), 5)).toEqual(['a', 'b', 'custom-key', 'custom-header']);
    d.decode(hex('4001630164'), 7); // c: d evicts custom-key
    expect(d.decode(hex('bebf'), 9)).toEqual(['c', 'd', 'a', 'b']);
    rejects(() => d.decode(hex('c0'), 11), 'COMPRESSION_ERROR', 'connection', /index 64/);
    const big = 'x'.repeat(80);
    d.decode(Buffer.concat([hex('400178'), Buffer.from([big.length]), Buffer.from(big)]), 13);
    expect([d.tableLength, d.tableSize]).toEqual([0, 0]);
  });

  it('caps the header list (name + value + 32 each) as a stream error, and stays in step after it', () => {
    const d = new HpackDecoder({ maxHeaderListSize: 100 });
    // Skip the encoder's leading size update to 0: this decoder's table must stay usable below.
    const block = new HpackEncoder().encode(['a', 'x'.repeat(40), 'b', 'y'.repeat(40)]).subarray(1);
    const e = rejects(() => d.decode(block, 5), 'PROTOCOL_ERROR', 'stream', /header list exceeds 100 bytes at field "b"/);
    expect(e.streamId).toBe(5);
    // Indexed fields keep decoding, and insertions still happen, past the cap.
    const indexed = hex('4001610162' + '4001630164' + 'be'.repeat(1000));
    rejects(() => d.decode(indexed, 7), 'PROTOCOL_ERROR', 'stream', /header list/);
    expect(d.tableLength).toBe(2);
    expect(d.decode(hex('bebf'), 9)).toEqual(['c', 'd', 'a', 'b']);
  });

  it('rejects malformed fields as stream errors, after decoding the whole block', () => {
    const enc = (...f: string[]): Buffer => Buffer.concat([hex('00'), ...f.map((s) => Buffer.concat([Buffer.from([s.length]), Buffer.from(s, 'latin1')]))]);
    const d = new HpackDecoder();
    rejects(() => d.decode(enc('Custom', 'v'), 1), 'PROTOCOL_ERROR', 'stream', /"Custom" has invalid byte 0x43 at 0/);
    rejects(() => d.decode(enc('a b', 'v'), 1), 'PROTOCOL_ERROR', 'stream', /invalid byte 0x20 at 1/);
    rejects(() => d.decode(enc('a:b', 'v'), 1), 'PROTOCOL_ERROR', 'stream', /invalid byte 0x3a/);
    rejects(() => d.decode(enc('', 'v'), 1), 'PROTOCOL_ERROR', 'stream', /empty header name/);
    rejects(() => d.decode(enc('a', 'x\r\ny: z'), 1), 'PROTOCOL_ERROR', 'stream', /invalid byte 0xd at 1/);
    rejects(() => d.decode(enc('a', 'x\0'), 1), 'PROTOCOL_ERROR', 'stream', /invalid byte 0x0/);
    rejects(() => d.decode(enc('a', 'x\ny'), 1), 'PROTOCOL_ERROR', 'stream', /invalid byte 0xa at 1/);
    rejects(() => d.decode(enc('a', ' x'), 1), 'PROTOCOL_ERROR', 'stream', /whitespace/);
    rejects(() => d.decode(enc('a', 'x\t'), 1), 'PROTOCOL_ERROR', 'stream', /whitespace/);
    // The faulty field is followed by an insertion: it is made, so the next block can use it.
    rejects(() => d.decode(Buffer.concat([enc('Upper', 'v'), hex('4001610162')]), 3), 'PROTOCOL_ERROR', 'stream');
    expect(d.decode(hex('be'), 5)).toEqual(['a', 'b']);
    expect(d.decode(enc(':path', '/ok'), 7)).toEqual([':path', '/ok']);
  });
});

describe('HPACK dynamic table against a model', () => {
  it('matches a plain-array table over random insertions, references, size updates and limit changes', () => {
    const r = rng(99);
    const d = new HpackDecoder({ maxHeaderListSize: 1 << 20 });
    let model: [string, string][] = [];
    let max = 4096;
    let limit = 4096;
    const evict = (): void => {
      let size = model.reduce((n, [a, b]) => n + a.length + b.length + 32, 0);
      while (size > max) {
        const [a, b] = model.pop() ?? ['', ''];
        size -= a.length + b.length + 32;
      }
    };
    const lit = (s: string): Buffer => Buffer.concat([Buffer.from([s.length]), Buffer.from(s)]);
    const int = (v: number, prefix: number, high: number): number[] => {
      const m = (1 << prefix) - 1;
      if (v < m) return [high | v];
      const out = [high | m];
      for (v -= m; v >= 128; v = Math.floor(v / 128)) out.push((v & 0x7f) | 0x80);
      return [...out, v];
    };
    for (let block = 0; block < 400; block++) {
      const parts: Buffer[] = [];
      const expected: string[] = [];
      if (r() < 0.05) {
        limit = [0, 100, 512, 4096, 8192][Math.floor(r() * 5)] ?? 4096;
        d.setMaxTableSize(limit);
        if (limit > max) max = limit;
      }
      if (max > limit || r() < 0.1) {
        max = Math.floor(r() * (limit + 1));
        parts.push(Buffer.from(int(max, 5, 0x20)));
        evict();
      }
      for (let f = 0; f < 1 + r() * 10; f++) {
        if (model.length > 0 && r() < 0.5) {
          const k = Math.floor(r() * model.length);
          parts.push(Buffer.from(int(62 + k, 7, 0x80)));
          expected.push(...(model[k] ?? ['', '']));
        } else {
          const name = `n${Math.floor(r() * 1000)}`;
          const value = 'v'.repeat(Math.floor(r() * 120));
          parts.push(Buffer.from([0x40]), lit(name), lit(value));
          expected.push(name, value);
          model.unshift([name, value]);
          if (name.length + value.length + 32 > max) model = [];
          evict();
        }
      }
      expect(d.decode(Buffer.concat(parts), 1), `block ${block}`).toEqual(expected);
      expect(d.tableLength).toBe(model.length);
    }
  });
});

describe('HPACK encoder', () => {
  it('uses static indices, static names, Huffman when shorter, and opens with a size update to 0', () => {
    const e = new HpackEncoder();
    const first = e.encode([':method', 'GET', ':status', '200']);
    expect(first.toString('hex')).toBe('208288');
    // :authority by name index 1 (4-bit prefix), the value in Huffman (13 bytes raw, 10 coded).
    const second = e.encode([':authority', '10.0.0.1:8080']);
    expect(second[0]).toBe(0x01);
    expect(huffmanLength('10.0.0.1:8080')).toBeLessThan(13);
    expect(second[1]).toBe(0x80 | huffmanLength('10.0.0.1:8080'));
    expect(second.length).toBe(2 + huffmanLength('10.0.0.1:8080'));
    // A value that Huffman makes longer goes raw.
    const raw = '\x01\x02\x03';
    const third = e.encode(['x-b', raw]);
    expect(third.subarray(third.length - 4).toString('latin1')).toBe('\x03' + raw);
    const d = new HpackDecoder();
    expect(d.decode(first, 1)).toEqual([':method', 'GET', ':status', '200']);
    expect(d.decode(second, 3)).toEqual([':authority', '10.0.0.1:8080']);
    expect(d.tableLength).toBe(0);
  });

  it('round-trips long literals (integer continuation) and random fields, leaving the table empty', () => {
    const e = new HpackEncoder();
    const d = new HpackDecoder({ maxHeaderListSize: 1 << 20 });
    const long = ['x-long', 'v'.repeat(200), 'x-longer-name-' + 'n'.repeat(150), 'w'.repeat(70000)];
    expect(d.decode(e.encode(long), 1)).toEqual(long);
    const r = rng(11);
    const tchar = 'abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&*+^`|~';
    for (let i = 0; i < 300; i++) {
      const fields: string[] = [];
      const n = 1 + Math.floor(r() * 8);
      for (let k = 0; k < n; k++) {
        const name = Array.from({ length: 1 + Math.floor(r() * 20) }, () => tchar[Math.floor(r() * tchar.length)]).join('');
        // Values: visible bytes 0x21..0xff with inner spaces.
        const len = Math.floor(r() * 300);
        const value = Array.from({ length: len }, (_, j) =>
          j > 0 && j < len - 1 && r() < 0.1 ? ' ' : String.fromCharCode(0x21 + Math.floor(r() * 0xdf)),
        ).join('');
        fields.push(name, value);
      }
      expect(d.decode(e.encode(fields), 1)).toEqual(fields);
    }
    expect(d.tableSize).toBe(0);
  });
});

describe('HPACK decoder fuzz', () => {
  it('throws nothing but H2ProtocolError on garbage and mutated valid blocks', () => {
    const r = rng(20261130);
    const seeds = [...Object.values(C).flatMap((c) => c.blocks.map((b) => hex(b.hex))), new HpackEncoder().encode(flat([[':authority', '10.0.0.1:80'], ['baggage', 'k=v']]))];
    const shared = new HpackDecoder({ maxTableSize: 4096, maxHeaderListSize: 4096 });
    const started = Date.now();
    let rejected = 0;
    let decoded = 0;
    for (let i = 0; i < 6000; i++) {
      let block: Buffer;
      if (i % 3 === 0) {
        block = Buffer.from(Array.from({ length: Math.floor(r() * 64) }, () => Math.floor(r() * 256)));
      } else {
        block = Buffer.from(seeds[Math.floor(r() * seeds.length)] ?? Buffer.alloc(0));
        const flips = 1 + Math.floor(r() * 4);
        for (let k = 0; k < flips && block.length > 0; k++) {
          const at = Math.floor(r() * block.length);
          block[at] = r() < 0.5 ? Math.floor(r() * 256) : (block[at] ?? 0) ^ (1 << Math.floor(r() * 8));
        }
        if (r() < 0.2) block = block.subarray(0, Math.floor(r() * block.length));
      }
      // A fresh decoder half of the time, a long-lived one (random table state) otherwise.
      const d = i % 2 === 0 ? new HpackDecoder({ maxTableSize: 256, maxHeaderListSize: 512 }) : shared;
      try {
        const out = d.decode(block, 1);
        expect(out.length % 2).toBe(0);
        decoded++;
      } catch (err) {
        if (!(err instanceof H2ProtocolError)) throw err;
        rejected++;
      }
    }
    expect(rejected).toBeGreaterThan(1000);
    expect(decoded).toBeGreaterThan(100);
    expect(Date.now() - started).toBeLessThan(2000);
  });
});
