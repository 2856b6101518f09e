// The node proxy without the istiod clients: what weir-ztunnel needs on a local config. The xDS client
// (gRPC and generated protobuf) and Istio's CA client are separate entry points, so a process that does
// not use them never loads them (`@weir/ztunnel/ca-client`; Ztunnel loads the xDS client itself).
export { Ztunnel } from './ztunnel.js';
export type { ZtunnelOptions } from './ztunnel.js';
export { InpodManager } from './inpod-manager.js';
export type { InpodManagerOptions, PodState, ProxyFactoryOptions } from './inpod-manager.js';
export { InpodProxy, DEFAULT_PORTS } from './inpod-proxy.js';
export type { InpodProxyOptions, InpodProxyState, OrigSrcMode, PodWorkloadInfo, ProxyPorts } from './inpod-proxy.js';
export { WorkloadStore, LocalConfigWatcher } from './workload-store.js';
export type { DnsEndpoint, ResolvedDestination } from './workload-store.js';
export { parseLocalConfig } from './local-config.js';
export type { LocalConfig, Policy, RbacMatch, Service, ServiceAccountMatch, StringMatch, Workload } from './local-config.js';
export { evaluatePolicies, policyMatches, parseSpiffeIdentity, formatSpiffeIdentity } from './authorization.js';
export type { AuthorizationDecision, ConnectionAttributes, EvaluateOptions, PeerIdentity } from './authorization.js';
export { IdentityManager, createEmbeddedCa, loadOrCreateCa } from './identity.js';
export type { CaFiles, CertificateSource, CertificateState, WorkloadCertificate } from './identity.js';
export { ZtunnelMetrics } from './metrics.js';
export type { ResponseFlag, TcpLabels } from './metrics.js';
export { ConnectionRecord } from './connection-record.js';
export type { ConnectionInfo, Endpoint } from './connection-record.js';
export { copyBidirectional } from './copy.js';
export type { CopyResult } from './copy.js';
export { createAdminServer, createMetricsServer, createReadinessServer, parseListenAddress, HttpEndpoint } from './admin.js';
export type { AdminHooks, ListenAddress } from './admin.js';
export { createLogger, formatTextLine, silentLogger, LOG_LEVELS } from './logger.js';
export type { CreateLoggerOptions, LogControl, LogLevel, Logger } from './logger.js';
export { ZtunnelError } from './errors.js';
export type { ZtunnelErrorCode } from './errors.js';
export { DnsProxy, DNS_PROXY_PORT, DnsMetrics, DnsNameTable, HostResolver, fdUdpSocketFactory, readResolvConfUpstreams, parseResolvConf } from './dns/index.js';
export type { DnsProxyOptions, DnsUpstream, UdpSocketFactory, UdpSocketSpec, ResolvConf } from './dns/index.js';
export { Socks5Listener, SOCKS5_PORT } from './socks5/index.js';
export type { Socks5ListenerOptions, Socks5Target } from './socks5/index.js';
export { tokenFromFile } from './xds/token.js';
