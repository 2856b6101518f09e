/** Object metadata as the fake stores it (a subset of `ObjectMeta`; unknown fields are kept). */
export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  generateName?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  [field: string]: unknown;
}

/** Any Kubernetes object: `metadata` plus whatever the resource carries (`spec`, `status`, …). */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  [field: string]: unknown;
}

/**
 * Input to the test controls: metadata may omit what the server assigns. Shaped so that
 * `@kubernetes/client-node`'s `V1Pod` (with `Date` timestamps) is accepted as is.
 */
export interface KubeObjectInput {
  apiVersion?: string;
  kind?: string;
  metadata?: {
    name?: string;
    namespace?: string;
    generateName?: string;
    uid?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    creationTimestamp?: string | Date;
    deletionTimestamp?: string | Date;
  };
  spec?: unknown;
  status?: unknown;
}

export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';

/** One line of a watch stream. */
export interface WatchEvent {
  type: WatchEventType;
  /** The object; a `Status` for ERROR; `{kind, apiVersion, metadata: {resourceVersion}}` for BOOKMARK. */
  object: { kind?: string; apiVersion?: string; metadata?: Record<string, unknown>; [field: string]: unknown };
}

/** One request the fake served, for assertions (`server.requests`). */
export interface RecordedRequest {
  method: string;
  /** Path without the query string. */
  path: string;
  query: Record<string, string>;
  contentType: string | undefined;
  authorization: string | undefined;
  /** The parsed JSON body, when there was one. */
  body: unknown;
  /** The HTTP status the fake answered with (0 while a watch is still streaming). */
  status: number;
  watch: boolean;
}
