import { CniPluginError } from './errors.js';

export const CNI_COMMANDS = ['ADD', 'DEL', 'CHECK', 'VERSION', 'STATUS', 'GC'] as const;
export type CniCommand = (typeof CNI_COMMANDS)[number];

/** The Kubernetes keys a runtime puts in `CNI_ARGS` (others are ignored, as `IgnoreUnknown` would). */
export interface K8sArgs {
  K8S_POD_NAMESPACE?: string;
  K8S_POD_NAME?: string;
  K8S_POD_UID?: string;
  K8S_POD_INFRA_CONTAINER_ID?: string;
}

/** The plugin's invocation environment, validated. */
export interface CniEnv {
  command: CniCommand;
  containerId: string | undefined;
  netns: string | undefined;
  ifName: string | undefined;
  args: K8sArgs;
  /** `CNI_PATH` split on `:`. */
  path: string[];
}

/** Which variables each command requires (SPEC.md "Parameters"). */
const REQUIRED: Record<CniCommand, readonly string[]> = {
  ADD: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
  CHECK: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
  DEL: ['CNI_CONTAINERID', 'CNI_IFNAME', 'CNI_PATH'],
  VERSION: [],
  STATUS: [],
  GC: [],
};

const ARG_VALUE = /^[\x21-\x7e]*$/;
const K8S_ARGS = ['K8S_POD_NAMESPACE', 'K8S_POD_NAME', 'K8S_POD_UID', 'K8S_POD_INFRA_CONTAINER_ID'] as const;

/** Parses `CNI_ARGS` (`K=V;K2=V2`); throws a code-4 error naming the bad pair. */
export function parseCniArgs(raw: string | undefined): K8sArgs {
  const pairs: Record<string, string> = {};
  for (const pair of (raw ?? '').split(';')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    if (eq <= 0) {
      throw new CniPluginError('ERR_CNI_INVALID_ENVIRONMENT', `CNI_ARGS: invalid pair "${pair}" (expected KEY=VALUE)`);
    }
    pairs[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  // Only the Kubernetes keys are kept and checked (the others are ignored, as IgnoreUnknown says).
  const out: K8sArgs = {};
  for (const k of K8S_ARGS) {
    const v = pairs[k];
    if (v === undefined) continue;
    if (!ARG_VALUE.test(v)) {
      throw new CniPluginError('ERR_CNI_INVALID_ENVIRONMENT', `CNI_ARGS: ${k}: must be printable ASCII without spaces`);
    }
    out[k] = v;
  }
  return out;
}

/**
 * Validates the CNI environment for its command. Throws CniPluginError code 4 naming the missing or
 * bad variable (`required env variables [CNI_NETNS] missing`, `unknown CNI_COMMAND: FOO`).
 */
export function parseCniEnv(env: Readonly<Record<string, string | undefined>>): CniEnv {
  const cmd = env['CNI_COMMAND'];
  if (cmd === undefined || cmd === '') {
    throw new CniPluginError('ERR_CNI_INVALID_ENVIRONMENT', 'required env variables [CNI_COMMAND] missing');
  }
  if (!(CNI_COMMANDS as readonly string[]).includes(cmd)) {
    throw new CniPluginError('ERR_CNI_INVALID_ENVIRONMENT', `unknown CNI_COMMAND: ${cmd}`);
  }
  const command = cmd as CniCommand;
  const missing = REQUIRED[command].filter((k) => (env[k] ?? '') === '');
  if (missing.length > 0) {
    throw new CniPluginError('ERR_CNI_INVALID_ENVIRONMENT', `required env variables [${missing.join(',')}] missing`);
  }
  const containerId = env['CNI_CONTAINERID'] || undefined;
  // The same rule libcni applies to container IDs (and network names).
  if (containerId !== undefined && !/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/.test(containerId)) {
    throw new CniPluginError('ERR_CNI_INVALID_ENVIRONMENT', `CNI_CONTAINERID "${containerId}" must match [a-zA-Z0-9][a-zA-Z0-9_.-]*`);
  }
  const ifName = env['CNI_IFNAME'] || undefined;
  if (ifName !== undefined && (ifName.length > 15 || /[\s/:]/.test(ifName) || ifName === '.' || ifName === '..')) {
    throw new CniPluginError('ERR_CNI_INVALID_ENVIRONMENT', `CNI_IFNAME "${ifName}" is not a valid interface name`);
  }
  return {
    command,
    containerId,
    netns: env['CNI_NETNS'] || undefined,
    ifName,
    args: parseCniArgs(env['CNI_ARGS']),
    path: (env['CNI_PATH'] ?? '').split(':').filter((p) => p !== ''),
  };
}
