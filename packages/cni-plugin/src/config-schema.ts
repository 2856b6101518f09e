import * as z from 'zod';
import { CIDR_ADDRESS, checkCniVersion, LOG_LEVELS, NETWORK_NAME, parsePluginConfigFast, toPluginConfig, type PluginConfig } from './config.js';
import { CniPluginError } from './errors.js';

// The zod schemas of the plugin config, in their own module: the plugin binary loads it (and zod) only
// for a config that the plain check in config.ts does not vouch for, to name what is wrong. Building
// and first running zod schemas costs more CPU than the rest of a plugin exec's own work.

function buildCniResultSchema() {
  const ipConfigSchema = z.looseObject({
    address: z.string().regex(CIDR_ADDRESS, 'must be a CIDR address like 10.0.0.5/24'),
    gateway: z.string().optional(),
    interface: z.number().int().nonnegative().optional(),
    version: z.enum(['4', '6']).optional(),
  });
  return z.looseObject({
    cniVersion: z.string().optional(),
    interfaces: z.array(z.looseObject({ name: z.string() })).optional(),
    ips: z.array(ipConfigSchema).optional(),
    routes: z.array(z.looseObject({ dst: z.string() })).optional(),
    dns: z.looseObject({}).optional(),
  });
}

function buildNetConfSchema() {
  const labelSelectorSchema = z.object({
    matchLabels: z.record(z.string(), z.string()).optional(),
    matchExpressions: z
      .array(
        z.object({
          key: z.string().min(1),
          operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist']),
          values: z.array(z.string()).optional(),
        }),
      )
      .optional(),
  });
  const enablementSelectorSchema = z.object({
    podSelector: labelSelectorSchema.optional(),
    namespaceSelector: labelSelectorSchema.optional(),
  });
  return z.looseObject({
    cniVersion: z.string(),
    name: z.string().regex(NETWORK_NAME, 'must be a network name matching [a-zA-Z0-9][a-zA-Z0-9_.-]*'),
    type: z.string().min(1),
    prevResult: buildCniResultSchema().optional(),
    plugin_log_level: z.enum(LOG_LEVELS).default('info'),
    cni_agent_run_dir: z.string().min(1).default('/var/run/istio-cni'),
    ambient_enabled: z.boolean().default(true),
    exclude_namespaces: z.array(z.string()).default([]),
    enablement_selectors: z.array(enablementSelectorSchema).optional(),
    pod_namespace: z.string().min(1).default('istio-system'),
    kubeconfig: z.string().min(1).optional(),
    // Older istio-cni configs nest these under `kubernetes`.
    kubernetes: z
      .looseObject({ kubeconfig: z.string().min(1).optional(), exclude_namespaces: z.array(z.string()).optional() })
      .optional(),
  });
}

/** A CNI result as passed in `prevResult`; unknown fields are kept so it passes through unchanged. */
export const cniResultSchema = /* @__PURE__ */ buildCniResultSchema();
export type CniResult = z.infer<ReturnType<typeof buildCniResultSchema>>;
export type NetConf = z.output<ReturnType<typeof buildNetConfSchema>>;

let netConfSchema: ReturnType<typeof buildNetConfSchema> | undefined;

function describeIssue(issue: z.core.$ZodIssue): string {
  const path = issue.path.length > 0 ? issue.path.join('.') : '<root>';
  return `${path}: ${issue.message}`;
}

/** Validates a network config object; throws code 1 or 7 naming the field at fault. */
export function parsePluginConfig(conf: Record<string, unknown>): PluginConfig {
  const fast = parsePluginConfigFast(conf);
  if (fast !== undefined) return fast;
  const cniVersion = checkCniVersion(conf);
  netConfSchema ??= buildNetConfSchema();
  const parsed = netConfSchema.safeParse(conf);
  if (!parsed.success) {
    throw new CniPluginError(
      'ERR_CNI_INVALID_CONFIG',
      `invalid network config: ${parsed.error.issues.map(describeIssue).join('; ')}`,
    );
  }
  return toPluginConfig(conf, cniVersion, parsed.data);
}
