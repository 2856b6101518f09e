import * as grpc from '@grpc/grpc-js';
import { fromBinary, toBinary, type DescMessage, type MessageShape } from '@bufbuild/protobuf';

// grpc-js speaks bytes; protobuf-es makes and reads them. These helpers join the two without a
// runtime .proto loader, so the generated schemas are the single source of the wire format.

export function serializer<D extends DescMessage>(schema: D): (m: MessageShape<D>) => Buffer {
  return (m) => Buffer.from(toBinary(schema, m));
}

export function deserializer<D extends DescMessage>(schema: D): (b: Buffer) => MessageShape<D> {
  return (b) => fromBinary(schema, b);
}

export interface ChannelOptions {
  /** `host:port`, or `https://host:port` as Istio writes it. */
  address: string;
  /** PEM roots for the server's certificate; absent: plaintext (tests and local sandboxes only). */
  rootCaPem?: string;
  /** Name to verify in the server's certificate instead of the host (ztunnel's ALT_XDS_HOSTNAME). */
  altHostname?: string;
}

/** `https://istiod.istio-system.svc:15012` → `istiod.istio-system.svc:15012`. */
export function grpcTarget(address: string): string {
  return address.replace(/^(https?|dns):\/\//, '').replace(/\/+$/, '');
}

export function channelCredentials(o: ChannelOptions): grpc.ChannelCredentials {
  return o.rootCaPem === undefined ? grpc.credentials.createInsecure() : grpc.credentials.createSsl(Buffer.from(o.rootCaPem));
}

export function channelOptions(o: ChannelOptions): grpc.ChannelOptions {
  return {
    ...(o.altHostname ? { 'grpc.ssl_target_name_override': o.altHostname, 'grpc.default_authority': o.altHostname } : {}),
    // istiod may push large snapshots (ztunnel allows 200 MiB).
    'grpc.max_receive_message_length': 200 * 1024 * 1024,
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
    // We own reconnect and backoff; don't let the channel queue calls while it is down.
    'grpc.enable_retries': 0,
  };
}

/** Headers ztunnel sends to istiod: the bearer token and the cluster id. */
export async function authMetadata(token: (() => Promise<string | undefined> | string | undefined) | undefined, clusterId: string | undefined): Promise<grpc.Metadata> {
  const md = new grpc.Metadata();
  const t = token ? await token() : undefined;
  if (t !== undefined && t !== '') md.set('authorization', `Bearer ${t.trim()}`);
  if (clusterId) md.set('clusterid', clusterId);
  return md;
}
