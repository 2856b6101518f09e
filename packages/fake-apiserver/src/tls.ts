import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { FakeApiServerError } from './errors.js';

const run = promisify(execFile);

/** PEM material for an HTTPS fake apiserver and a client of it. */
export interface TestPki {
  ca: string;
  /** Server certificate for `127.0.0.1`, `::1` and `localhost`. */
  serverCert: string;
  serverKey: string;
  /** Client certificate (CN `weir-test`, O `system:masters`) signed by the same CA. */
  clientCert: string;
  clientKey: string;
}

/**
 * Generates a throwaway CA, server and client certificate with the `openssl` CLI (EC P-256, 1 day),
 * so tests can exercise HTTPS, CA verification and client-certificate auth.
 */
export async function createTestPki(): Promise<TestPki> {
  const dir = await mkdtemp(join(tmpdir(), 'weir-fake-pki-'));
  const f = (n: string) => join(dir, n);
  const openssl = async (...args: string[]) => {
    try {
      await run('openssl', args);
    } catch (err) {
      throw new FakeApiServerError('ERR_FAKE_API_TLS', `openssl ${args[0]} failed (is openssl installed?): ${(err as Error).message}`, {
        cause: err,
      });
    }
  };
  try {
    const key = (n: string) => openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', f(n));
    await key('ca.key');
    await openssl('req', '-x509', '-new', '-key', f('ca.key'), '-days', '1', '-subj', '/CN=weir-fake-ca', '-out', f('ca.crt'));
    const leaf = async (n: string, subj: string, ext: string) => {
      await key(`${n}.key`);
      await openssl('req', '-new', '-key', f(`${n}.key`), '-subj', subj, '-out', f(`${n}.csr`));
      await writeFile(f(`${n}.ext`), ext);
      await openssl(
        'x509', '-req', '-in', f(`${n}.csr`), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial',
        '-days', '1', '-extfile', f(`${n}.ext`), '-out', f(`${n}.crt`),
      );
    };
    await leaf('server', '/CN=fake-apiserver', 'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
    await leaf('client', '/O=system:masters/CN=weir-test', 'extendedKeyUsage=clientAuth\n');
    const read = (n: string) => readFile(f(n), 'utf8');
    return {
      ca: await read('ca.crt'),
      serverCert: await read('server.crt'),
      serverKey: await read('server.key'),
      clientCert: await read('client.crt'),
      clientKey: await read('client.key'),
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
