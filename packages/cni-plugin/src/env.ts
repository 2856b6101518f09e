import * as z from 'zod';
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

function buildK8sArgsSchema() {
  const argValue = z.string().regex(ARG_VALUE, 'must be printable ASCII without spaces');
  return z.object({
    K8S_POD_NAMESPACE: argValue.optional(),
    K8S_POD_NAME: argValue.optional(),
    K8S_POD_UID: argValue.optional(),
    K8S_POD_INFRA_CONTAINER_ID: argValue.optional(),
  });
}

// Built only for CNI_ARGS that fail the plain check below, to name the fault: zod schemas cost more
// to build than a plugin exec spends on everything else before its first call.
let k8sArgsSchema: ReturnType<typeof buildK8sArgsSchema> | undefined;

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
  if (K8S_ARGS.every((k) => pairs[k] === undefined || ARG_VALUE.test(pairs[k]))) {
    // What the schema outputs: only its keys, in its order.
    const out: K8sArgs = {};
    for (const k of K8S_ARGS) if (pairs[k] !== undefined) out[k] = pairs[k];
    return out;
  }
  k8sArgsSchema ??= buildK8sArgsSchema();
  const parsed = k8sArgsSchema.safeParse(pairs);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new CniPluginError(
      'ERR_CNI_INVALID_ENVIRONMENT',
      `CNI_ARGS: ${String(issue?.path[0])}: ${issue?.message ?? 'invalid'}`,
    );
  }
  return parsed.data;
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
