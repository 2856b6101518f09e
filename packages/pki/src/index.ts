export { LocalCa, splitPem } from './local-ca.js';
export type {
  CreateCaOptions,
  IssueIntermediateOptions,
  IssueServerOptions,
  IssueWorkloadForKeyOptions,
  IssueWorkloadOptions,
  LoadCaOptions,
  ServerCertificate,
  SignedWorkloadCertificate,
  WorkloadCertificate,
} from './local-ca.js';
export { createCertificateSigningRequest, parseCertificateSigningRequest } from './csr.js';
export type { CertificateSigningRequest, CreateCsrOptions, ParsedCertificateSigningRequest } from './csr.js';
export { PkiError } from './errors.js';
export type { PkiErrorCode } from './errors.js';
