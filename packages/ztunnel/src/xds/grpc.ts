import * as grpc from '@grpc/grpc-js';
import { fromBinary, toBinary, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import { ZtunnelError } from '../errors.js';
import type { Logger } from '../logger.js';

// grpc-js speaks bytes; protobuf-es makes and reads them. These helpers join the two without a
// runtime .proto loader, so the generated schemas are the single source of the wire format.

export function serializer<D extends DescMessage>(schema: D): (m: MessageShape<D>) => Buffer {
  return (m) => Buffer.from(toBinary(schema, m));
}

export function deserializer<D extends DescMessage>(schema: D): (b: Buffer) => MessageShape<D> {
  return (b) => fromBinary(schema, b);
}

export interface ChannelOptions {
  /**
   * `https://host:port` as Istio writes it, or `host:port`: TLS, verified against `rootCaPem`.
   * `http://host:port`: plaintext, only when asked for so (local sandboxes): no bearer token is sent.
   */
  address: string;
  /** PEM roots for the server's certificate; required unless the address is `http://`. */
  rootCaPem?: string;
  /** Name to verify in the server's certificate instead of the host (ztunnel's ALT_XDS_HOSTNAME). */
  altHostname?: string;
  /** Where the plaintext warning goes. */
  logger?: Logger;
}

/** `https://istiod.istio-system.svc:15012` → `istiod.istio-system.svc:15012`. */
export function grpcTarget(address: string): string {
  return address.replace(/^(https?|dns):\/\//i, '').replace(/\/+$/, '');
}

/** Only an explicit `http://` dials without TLS; an address without a scheme is TLS, as istiod's 15012. */
export function isPlaintext(address: string): boolean {
  return /^http:\/\//i.test(address.trim());
}

/** Throws unless the address can be dialled as configured (TLS needs the server's root). */
export function checkChannel(o: ChannelOptions): void {
  if (!isPlaintext(o.address) && o.rootCaPem === undefined) {
    throw new ZtunnelError(
      'ERR_ZTUNNEL_CONFIG',
      `${o.address}: TLS needs the server's root certificate (rootCaPem); only an explicit http:// address is dialled without TLS`,
    );
  }
}

const warned = new WeakSet<ChannelOptions>();

export function channelCredentials(o: ChannelOptions): grpc.ChannelCredentials {
  checkChannel(o);
  if (!isPlaintext(o.address)) return grpc.credentials.createSsl(Buffer.from(o.rootCaPem!));
  if (!warned.has(o)) {
    warned.add(o);
    o.logger?.warn(
      { address: o.address },
      'control plane over plaintext (http://): anyone on the path can read and change the workload state, policies and certificates; the bearer token is not sent',
    );
  }
  return grpc.credentials.createInsecure();
}

// The service-account token is a credential for istiod: a plaintext channel drops it from every
// call, whoever put it into the call's metadata.
const dropBearerToken: grpc.Interceptor = (options, nextCall) =>
  new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      metadata.remove('authorization');
      next(metadata, listener);
    },
  });

export function channelOptions(o: ChannelOptions): grpc.ClientOptions {
  return {
    ...(isPlaintext(o.address) ? { interceptors: [dropBearerToken] } : {}),
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
