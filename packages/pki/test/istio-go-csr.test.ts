import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as der from '../src/der.js';
import { createCertificateSigningRequest, parseCertificateSigningRequest } from '../src/index.js';
import { handMadeCsr } from './hand-made-csr.js';

// Istio's agent writes its CSRs, and istiod parses them, with Go's crypto/x509: csrtool does both.
const run = promisify(execFile);
const SOURCE = fileURLToPath(new URL('./go/csrtool.go', import.meta.url));
const ID = 'spiffe://cluster.local/ns/default/sa/web';
let dir: string;
let csrtool: string;

async function tool(args: string[], input?: string): Promise<unknown> {
  const child = run(csrtool, args, { timeout: 60_000 });
  if (input !== undefined) child.child.stdin?.end(input);
  return JSON.parse((await child).stdout);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'weir-pki-go-'));
  csrtool = join(dir, 'csrtool');
  const env = { ...process.env, GO111MODULE: 'off', GOFLAGS: '', GOCACHE: join(tmpdir(), 'weir-pki-gocache'), GOPATH: join(tmpdir(), 'weir-pki-gopath') };
  try {
    await run('go', ['build', '-o', csrtool, SOURCE], { env, cwd: dir, timeout: 180_000 });
  } catch (cause) {
    throw new Error(`this test needs Go (Debian golang-go) to build ${SOURCE}: ${(cause as Error).message}`, { cause });
  }
}, 200_000);
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('CSRs and Go crypto/x509 (Istio agent and istiod)', () => {
  it('takes what the Istio agent writes: RSA 2048, EC P-256 and P-384 (Go signs that one ecdsa-with-SHA384)', async () => {
    const made = (await tool(['make', ID])) as Record<string, string>;
    expect(Object.keys(made).sort()).toEqual(['p256', 'p384', 'rsa2048']);
    for (const pem of Object.values(made)) expect(parseCertificateSigningRequest(pem).identities).toEqual([ID]);
    const body = Buffer.from(made.p384!.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
    const [, algorithm] = der.children(der.readElement(body).content);
    expect(algorithm?.raw.equals(der.sequence(der.oid('1.2.840.10045.4.3.3')))).toBe(true);
  });

  it('writes what istiod parses, and what it refuses as mismatched Go refuses too', async () => {
    const ours = await createCertificateSigningRequest({ identity: ID });
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    const ec = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
    const mismatched = [handMadeCsr(rsa, '1.2.840.10045.4.3.2'), handMadeCsr(ec, '1.2.840.113549.1.1.11')];
    const verdicts = (await tool(['check'], JSON.stringify([ours.csrPem, ...mismatched]))) as string[];
    expect(verdicts[0]).toBe('ok');
    for (const [i, pem] of mismatched.entries()) {
      expect(verdicts[i + 1]).not.toBe('ok');
      expect(() => parseCertificateSigningRequest(pem)).toThrow(/does not match its subjectPublicKeyInfo/);
    }
  });
});
