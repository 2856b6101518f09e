export { LocalCa, splitPem } from './local-ca.js';
export type {
  CreateCaOptions,
  IssueIntermediateOptions,
  IssueWorkloadOptions,
  LoadCaOptions,
  WorkloadCertificate,
} from './local-ca.js';
export { PkiError } from './errors.js';
export type { PkiErrorCode } from './errors.js';
