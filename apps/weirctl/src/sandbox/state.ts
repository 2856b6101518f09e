import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';

const labels = z.record(z.string(), z.string());

const componentSchema = z.object({
  name: z.enum(['weir-cni-agent', 'weir-ztunnel', 'weir-cni', 'weir-test-control-plane']),
  path: z.string().optional(),
  present: z.boolean(),
  detail: z.string(),
});

/**
 * Where the ztunnels get workloads, policies and certificates: `local` — LOCAL_XDS_PATH and a CA on disk
 * shared by the nodes; `xds` — a weir-test-control-plane (Delta xDS + Istio CA, as istiod) serving the
 * same local-xds file, which it watches.
 */
const controlPlaneSchema = z.discriminatedUnion('mode', [
  z.object({ mode: z.literal('local') }),
  z.object({
    mode: z.literal('xds'),
    /** The node whose netns it runs in, its supervised process name in the topology, and its pid (`down` stops it by that record). */
    node: z.string(),
    process: z.string(),
    pid: z.number().int(),
    /** `https://<node ip>:<port>`: XDS_ADDRESS and CA_ADDRESS of every ztunnel. */
    address: z.string(),
    /** The name its certificate carries (ALT_XDS_HOSTNAME, ALT_CA_HOSTNAME). */
    hostname: z.string(),
    outDir: z.string(),
    rootCa: z.string(),
    tokenFile: z.string(),
  }),
]);

const stateSchema = z.object({
  version: z.literal(1),
  name: z.string(),
  createdAt: z.string(),
  topologyStateDir: z.string(),
  files: z.object({ podsFile: z.string(), localXds: z.string(), caCert: z.string(), caKey: z.string() }),
  components: z.array(componentSchema),
  controlPlane: controlPlaneSchema.default({ mode: 'local' }),
  namespaces: z.array(z.object({ name: z.string(), labels })),
  /** Authorization policies as given to `policy apply` (ztunnel's local-config input shape), rendered into LOCAL_XDS_PATH. */
  policies: z.array(z.record(z.string(), z.unknown())).default([]),
  pods: z.array(
    z.object({
      name: z.string(),
      namespace: z.string(),
      node: z.string(),
      labels,
      app: z.union([z.object({ kind: z.literal('sleep') }), z.object({ kind: z.literal('http-echo'), port: z.number() })]),
    }),
  ),
  nodes: z.array(
    z.object({
      name: z.string(),
      zdsSocket: z.string(),
      runDir: z.string(),
      /** Names of the supervised processes in the topology (absent: component not started). */
      agentProcess: z.string().optional(),
      ztunnelProcess: z.string().optional(),
      /** Why a component is not running on this node. */
      notes: z.array(z.string()),
    }),
  ),
});

export type SandboxState = z.infer<typeof stateSchema>;
export type ControlPlaneState = z.infer<typeof controlPlaneSchema>;
export type ControlPlaneMode = ControlPlaneState['mode'];
export type ComponentInfo = z.infer<typeof componentSchema>;
export type ComponentName = ComponentInfo['name'];

export const STATE_FILE = 'state.json';

export function stateFile(dir: string): string {
  return join(dir, STATE_FILE);
}

/** The sandbox state, or undefined when there is none. A corrupt file is an error naming the field. */
export async function readSandboxState(dir: string): Promise<SandboxState | undefined> {
  let text: string;
  try {
    text = await readFile(stateFile(dir), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new Error(`sandbox state ${stateFile(dir)} is not JSON (${(err as Error).message}); run weirctl sandbox down`, { cause: err });
  }
  const parsed = stateSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new Error(`sandbox state ${stateFile(dir)}: ${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'}; run weirctl sandbox down`);
  }
  return parsed.data;
}

/** The first write, exclusive: false when a state file exists (another `up` got there first). */
export async function createSandboxState(dir: string, state: SandboxState): Promise<boolean> {
  await mkdir(dir, { recursive: true });
  try {
    await writeFile(stateFile(dir), `${JSON.stringify(state, null, 2)}\n`, { flag: 'wx' });
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
}

export async function writeSandboxState(dir: string, state: SandboxState): Promise<void> {
  await mkdir(dir, { recursive: true });
  const tmp = `${stateFile(dir)}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(state, null, 2)}\n`);
  await rename(tmp, stateFile(dir));
}
