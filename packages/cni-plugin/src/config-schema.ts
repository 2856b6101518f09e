import * as z from 'zod/mini';
import { CIDR_ADDRESS, checkCniVersion, LOG_LEVELS, NETWORK_NAME, toPluginConfig, type PluginConfig } from './config.js';
import { CniPluginError } from './errors.js';
import './zod-locale.js';

// zod/mini, not zod: the plugin binary is exec'd once per pod, and mini's schemas bundle to a few KiB of
// functions instead of classic zod's ~450 KiB of methods, which cost ~30 ms of CPU per exec to load.

function buildCniResultSchema() {
  const ipConfigSchema = z.looseObject({
    address: z.string().check(z.regex(CIDR_ADDRESS, 'must be a CIDR address like 10.0.0.5/24')),
    gateway: z.optional(z.string()),
    interface: z.optional(z.int().check(z.nonnegative())),
    version: z.optional(z.enum(['4', '6'])),
  });
  return z.looseObject({
    cniVersion: z.optional(z.string()),
    interfaces: z.optional(z.array(z.looseObject({ name: z.string() }))),
    ips: z.optional(z.array(ipConfigSchema)),
    routes: z.optional(z.array(z.looseObject({ dst: z.string() }))),
    dns: z.optional(z.looseObject({})),
  });
}

function buildNetConfSchema(cniResult: ReturnType<typeof buildCniResultSchema>) {
  const nonEmpty = () => z.string().check(z.minLength(1));
  const labelSelectorSchema = z.object({
    matchLabels: z.optional(z.record(z.string(), z.string())),
    matchExpressions: z.optional(
      z.array(
        z.object({
          key: nonEmpty(),
          operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist']),
          values: z.optional(z.array(z.string())),
        }),
      ),
    ),
  });
  const enablementSelectorSchema = z.object({
    podSelector: z.optional(labelSelectorSchema),
    namespaceSelector: z.optional(labelSelectorSchema),
  });
  return z.looseObject({
    cniVersion: z.string(),
    name: z.string().check(z.regex(NETWORK_NAME, 'must be a network name matching [a-zA-Z0-9][a-zA-Z0-9_.-]*')),
    type: nonEmpty(),
    prevResult: z.optional(cniResult),
    plugin_log_level: z._default(z.enum(LOG_LEVELS), 'info'),
    cni_agent_run_dir: z._default(nonEmpty(), '/var/run/istio-cni'),
    ambient_enabled: z._default(z.boolean(), true),
    exclude_namespaces: z._default(z.array(z.string()), []),
    enablement_selectors: z.optional(z.array(enablementSelectorSchema)),
    pod_namespace: z._default(nonEmpty(), 'istio-system'),
    kubeconfig: z.optional(nonEmpty()),
    // Older istio-cni configs nest these under `kubernetes`.
    kubernetes: z.optional(z.looseObject({ kubeconfig: z.optional(nonEmpty()), exclude_namespaces: z.optional(z.array(z.string())) })),
  });
}

/** A CNI result as passed in `prevResult`; unknown fields are kept so it passes through unchanged. */
export const cniResultSchema = /* @__PURE__ */ buildCniResultSchema();
export type CniResult = z.infer<typeof cniResultSchema>;
export type NetConf = z.output<ReturnType<typeof buildNetConfSchema>>;

let netConfSchema: ReturnType<typeof buildNetConfSchema> | undefined;

function describeIssue(issue: z.core.$ZodIssue): string {
  const path = issue.path.length > 0 ? issue.path.join('.') : '<root>';
  return `${path}: ${issue.message}`;
}

/** Validates a network config object; throws code 1 or 7 naming the field at fault. */
export function parsePluginConfig(conf: Record<string, unknown>): PluginConfig {
  const cniVersion = checkCniVersion(conf);
  netConfSchema ??= buildNetConfSchema(cniResultSchema);
  // Parsed once per process: zod's generated fast path (`new Function` per object shape) would cost more to compile than it saves.
  const parsed = netConfSchema.safeParse(conf, { jitless: true });
  if (!parsed.success) {
    throw new CniPluginError(
      'ERR_CNI_INVALID_CONFIG',
      `invalid network config: ${parsed.error.issues.map(describeIssue).join('; ')}`,
    );
  }
  return toPluginConfig(conf, cniVersion, parsed.data);
}
