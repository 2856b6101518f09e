import { TopologyError } from './errors.js';

const LABEL = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;

/** DNS-label names (what Kubernetes allows for pods and namespaces): they become netns and file names. */
export function assertName(kind: string, value: string, maxLength: number): void {
  if (typeof value !== 'string' || value.length > maxLength || !LABEL.test(value)) {
    throw new TopologyError(
      'TOPOLOGY_INVALID_OPTIONS',
      `${kind} ${JSON.stringify(value)} must be lowercase letters, digits and '-', start and end alphanumeric, at most ${maxLength} characters`,
    );
  }
}

/** A string safe as a file name. */
export function fileSafe(value: string): string {
  return value.replace(/[^A-Za-z0-9._-]/g, '_');
}
