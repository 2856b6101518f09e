export { NodeAgent, type NodeAgentOptions, type ZtunnelServer } from './agent.js';
export { PodController, type PodControllerOptions, type PodState, type PodStatus } from './controller.js';
export {
  CAPTURE_BYPASS_EVENT_REASON,
  CaptureBypassGuard,
  captureBypassOf,
  describeCaptureBypass,
  normalizeCapability,
  RUNTIME_DEFAULT_CAPABILITIES,
  type BypassCapability,
  type BypassContainer,
  type CaptureBypassGuardOptions,
  type CaptureBypassMode,
  type CaptureBypassOptions,
} from './capture-bypass.js';
export { CniAgentError, type CniAgentErrorCode } from './errors.js';
export { CniEventServer, CMD_ADD_OK_BODY, type CmdAddEvent, type CmdAddOutcome, type CniEventServerOptions } from './event-server.js';
export { FilePodSource, type FilePodSourceOptions, type PodsFile } from './file-source.js';
export { HealthServer, type HealthServerOptions } from './health-server.js';
export { KubePodSource, type KubePodSourceOptions } from './kube-source.js';
export { silentLogger, type Logger } from './logger.js';
export { AgentMetrics } from './metrics.js';
export {
  namespaceFromV1,
  podFromV1,
  REDIRECTION_ANNOTATION,
  type ContainerSecurity,
  type NamespaceInfo,
  type PodInfo,
} from './pod.js';
export type { PodEvent, PodSource, PodSourceHandlers } from './pod-source.js';
export type { EnrollmentRule, NetnsHandle, NetnsHoldsIp, OpenNetns, PodRules, RepairReport, WorkloadHandoff } from './ports.js';
export { findPodNetnsInProc, holdsPodIp, netnsLocalAddresses, type ProcNetnsMatch, type ProcScanOptions } from './proc-scan.js';
export { createNodeAgent, type CreateNodeAgentOptions } from './create-agent.js';
export { DNS_CAPTURE_ANNOTATION, IptablesPodRules, type IptablesPodRulesOptions } from './iptables-rules.js';
export { inpodCapture, IPV6_GUARD_CHAINS, ipv6GuardFamily, podHasIpv6, type CaptureConfig } from './capture-rules.js';
