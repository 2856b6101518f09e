import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterEach, expect, it, vi } from 'vitest';

const realPlatform = process.platform;

afterEach(() => {
  Object.defineProperty(process, 'platform', { value: realPlatform });
  vi.resetModules();
});

it('importing on a non-Linux platform fails with one clear ERR_NETNS_UNSUPPORTED_PLATFORM error', async () => {
  vi.resetModules();
  Object.defineProperty(process, 'platform', { value: 'darwin' });
  await expect(import('./index.js')).rejects.toMatchObject({
    name: 'NetnsError',
    code: 'ERR_NETNS_UNSUPPORTED_PLATFORM',
    message: expect.stringMatching(/^@weir\/netns works only on Linux .*this platform is darwin$/),
  });
});

it('the built package fails the same way in a plain Node process', async () => {
  const dist = fileURLToPath(new URL('../dist/index.js', import.meta.url));
  if (!existsSync(dist)) throw new Error(`this test runs the built package: ${dist} is missing; run "npm run build -w @weir/netns" first`);
  const fake = "Object.defineProperty(process, 'platform', { value: 'win32' });";
  const code = `import(${JSON.stringify(pathToFileURL(dist).href)}).then(() => console.log('loaded'), (e) => console.log(e.code + ' ' + e.message));`;
  const out = await new Promise<string>((resolve, reject) =>
    execFile(process.execPath, ['--import', `data:text/javascript,${encodeURIComponent(fake)}`, '-e', code], { encoding: 'utf8' }, (err, stdout) =>
      err ? reject(err) : resolve(stdout.trim()),
    ),
  );
  expect(out).toBe('ERR_NETNS_UNSUPPORTED_PLATFORM @weir/netns works only on Linux (network namespaces, setns, SO_ORIGINAL_DST); this platform is win32');
});
