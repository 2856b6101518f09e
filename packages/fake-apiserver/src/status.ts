/** A Kubernetes `Status` object (`kind: Status`), the body of every API error. */
export type KubeStatus = {
  kind: 'Status';
  apiVersion: 'v1';
  metadata: Record<string, never>;
  status: 'Failure' | 'Success';
  message: string;
  reason: string;
  details?: { name?: string; group?: string; kind?: string };
  code: number;
};

/** The `reason` the real apiserver puts beside each HTTP status it sends. */
const REASONS: Record<number, string> = {
  400: 'BadRequest',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  405: 'MethodNotAllowed',
  409: 'Conflict',
  410: 'Expired',
  415: 'UnsupportedMediaType',
  422: 'Invalid',
  429: 'TooManyRequests',
  500: 'InternalError',
  503: 'ServiceUnavailable',
  504: 'Timeout',
};

export function kubeStatus(
  code: number,
  message: string,
  opts: { reason?: string; name?: string; kind?: string; group?: string } = {},
): KubeStatus {
  const status: KubeStatus = {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message,
    reason: opts.reason ?? REASONS[code] ?? 'Unknown',
    code,
  };
  if (opts.name !== undefined || opts.kind !== undefined) {
    status.details = {};
    if (opts.name !== undefined) status.details.name = opts.name;
    if (opts.group !== undefined) status.details.group = opts.group;
    if (opts.kind !== undefined) status.details.kind = opts.kind;
  }
  return status;
}

/** `pods "web-0" not found` — the apiserver's exact wording. */
export function notFound(resource: string, name: string): KubeStatus {
  return kubeStatus(404, `${resource} "${name}" not found`, { name, kind: resource });
}

export function alreadyExists(resource: string, name: string): KubeStatus {
  return kubeStatus(409, `${resource} "${name}" already exists`, { reason: 'AlreadyExists', name, kind: resource });
}

export function conflict(resource: string, name: string): KubeStatus {
  return kubeStatus(
    409,
    `Operation cannot be fulfilled on ${resource} "${name}": the object has been modified; please apply your changes to the latest version and try again`,
    { reason: 'Conflict', name, kind: resource },
  );
}

export function tooOld(requested: number, oldest: number): KubeStatus {
  return kubeStatus(410, `too old resource version: ${requested} (${oldest})`, { reason: 'Expired' });
}
