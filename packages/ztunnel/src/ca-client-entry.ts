// `@weir/ztunnel/ca-client`: Istio's CA client alone (gRPC), for processes that import `@weir/ztunnel/core`.
export { CaClient } from './ca-client/ca-client.js';
export type { CaClientOptions, CaCertificateDump } from './ca-client/ca-client.js';
