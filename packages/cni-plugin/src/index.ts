export { runCni, AGENT_POD_PREFIXES } from './plugin.js';
export type { CniInvocation, CniOutcome, CniPluginOptions } from './plugin.js';
export { parseCniEnv, parseCniArgs, CNI_COMMANDS } from './env.js';
export type { CniEnv, CniCommand, K8sArgs } from './env.js';
export { decodeStdin, checkCniVersion } from './config.js';
export { parsePluginConfig, cniResultSchema } from './config-schema.js';
export type { PluginConfig, CniResult, LogLevel } from './config.js';
export { SUPPORTED_VERSIONS, LATEST_VERSION, isSupportedVersion, compareVersions, convertResult } from './version.js';
export type { CniVersion } from './version.js';
export { CniPluginError, CNI_ERROR_CODES, toCniError } from './errors.js';
export type { CniErrorCode, CniErrorResult } from './errors.js';
export {
  isAmbientEnrolled,
  labelSelectorMatches,
  DEFAULT_ENABLEMENT_SELECTORS,
  DATAPLANE_MODE_LABEL,
  SIDECAR_STATUS_ANNOTATION,
} from './enrollment.js';
export type {
  EnablementSelector,
  EnrollmentNamespace,
  EnrollmentOptions,
  EnrollmentPod,
  LabelSelector,
  LabelSelectorRequirement,
} from './enrollment.js';
export {
  cmdAddEventSchema,
  cmdAddIpConfigSchema,
  ipConfigsFromResult,
  ipConfigAddress,
  CMD_ADD_PATH,
  PLUGIN_EVENT_SOCKET,
} from './event.js';
export type { CmdAddEvent, CmdAddEventBody, CmdAddIpConfig } from './event.js';
export { postCmdAdd } from './agent-client.js';
export type { CmdAddAnswer, PostCmdAddOptions } from './agent-client.js';
export { KubeClient, loadKubeconfig } from './kube-client.js';
export type { KubeConnection, KubeApiFailure } from './kube-client.js';
export { lineLogger, silentLogger } from './logger.js';
export type { Logger, LoggerLevel } from './logger.js';
